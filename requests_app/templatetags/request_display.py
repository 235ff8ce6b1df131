"""Display helpers for the request and usage pages: times, durations, and the SVG bar chart."""

import math
import re
from datetime import UTC

from django import template
from django.contrib.humanize.templatetags.humanize import intcomma, naturaltime
from django.utils import timezone
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

register = template.Library()


@register.simple_tag
def reltime(moment):
    """“3 minutes ago”, with the exact UTC time on hover and for machines."""
    if not moment:
        return mark_safe('<span class="muted">—</span>')
    utc = moment.astimezone(UTC)
    return format_html(
        '<time datetime="{}" title="{} UTC">{}</time>',
        utc.isoformat(timespec="seconds"),
        utc.strftime("%Y-%m-%d %H:%M:%S"),
        naturaltime(moment),
    )


@register.filter
def inline_code(text):
    """Docs strings mark code with `backticks`: escape, then set those parts in <code>."""
    return mark_safe(re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text)))  # noqa: S308


@register.filter
def duration(milliseconds):
    """812 ms, 2.4 s, 3 min 5 s."""
    if milliseconds is None or milliseconds == "":
        return "—"
    milliseconds = int(milliseconds)
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    if milliseconds < 60_000:
        return f"{milliseconds / 1000:.1f} s"
    minutes, seconds = divmod(round(milliseconds / 1000), 60)
    return f"{minutes} min {seconds} s"


@register.filter
def elapsed_ms(request):
    """From acceptance to the end (or to now, while it runs)."""
    end = request.finished_at or timezone.now()
    return max(0, int((end - request.created_at).total_seconds() * 1000))


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^k at or above `value` (so axis labels read well)."""
    if value <= 1:
        return 1
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * exponent >= value:
            return step * exponent
    return 10 * exponent


def _short(number: float) -> str:
    """Axis labels: 2.5, 40, 1.2k, 3M."""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if number >= size:
            return f"{number / size:.3g}{suffix}"
    return f"{number:g}"


WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 200, 44, 22, 8


@register.inclusion_tag("requests_app/_bar_chart.html")
def bar_chart(days, field: str, noun: str, chart_id: str):
    """A server-rendered SVG bar chart of `field` per day: no JavaScript, scales to its box."""
    values = [getattr(day, field) for day in days]
    top = _nice_ceiling(max([*values, 2]))  # at least 2: the middle gridline stays whole
    plot_width, plot_height = WIDTH - LEFT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(days), 1)
    today = timezone.now().date()
    bars = []
    for index, (day, value) in enumerate(zip(days, values, strict=True)):
        height = plot_height * value / top
        x = LEFT + index * slot
        bars.append(
            {
                "x": round(x + slot * 0.15, 1),
                "y": round(TOP + plot_height - height, 1),
                "width": round(slot * 0.7, 1),
                "height": round(height, 1),
                "label_x": round(x + slot / 2, 1),
                "day": day.day,
                "show_label": day.day.day == 1 or day.day.day % 5 == 0,
                "title": f"{day.day:%b} {day.day.day}: {intcomma(value)} {noun}",
                "is_today": day.day == today,
            }
        )
    gridlines = [
        {"y": round(TOP + plot_height * (1 - fraction), 1), "label": _short(top * fraction)}
        for fraction in (0, 0.5, 1)
    ]
    return {
        "chart_id": chart_id,
        "bars": bars,
        "gridlines": gridlines,
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "baseline": TOP + plot_height,
        "label_y": HEIGHT - 6,
        "total": intcomma(sum(values)),
        "noun": noun,
    }
