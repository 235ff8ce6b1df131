"""The background processes' heartbeats for the admin index (core/admin.py)."""

from django import template

from core import heartbeats

register = template.Library()

LABELS = {heartbeats.SWEEPER: "Sweeper (beat)", heartbeats.WORKER: "Workers"}


@register.simple_tag
def background_processes() -> list[dict] | None:
    """One row per watched process; None when Redis, where the heartbeats live, is down."""
    try:
        beats = heartbeats.current()
    except Exception:
        return None
    return [
        {
            "label": LABELS[beat.name],
            "last_seen": "never seen"
            if beat.age_seconds is None
            else f"last seen {round(beat.age_seconds)} seconds ago",
            "stale": beat.stale,
            "stale_after": round(beat.stale_after_seconds),
        }
        for beat in beats
    ]
