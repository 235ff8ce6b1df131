"""Turning batches into figures: percentiles, the targets, the printed table and the JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# Issue #17's targets for this 2-core machine (the engine issue's were 10, 20 and 100 ms).
TARGET_ADDED_P50_C1 = 5.0
TARGET_ADDED_P50_C50 = 20.0
TARGET_ADDED_P99_C50 = 60.0
TARGET_CPU_MS = 5.0  # web + worker + PostgreSQL + Redis per request at c=50, 0 ms upstream
TARGET_CEILING_RPS = 350.0
TARGET_ACCEPTS_PER_S = 600.0
TARGET_DRAIN_PER_S = 300.0
TARGET_SOAK_GROWTH_MB = 10.0


def stack_cpu_ms(scenario: dict) -> float:
    cpu = scenario["cpu_ms_per_request"]
    return cpu["web"] + cpu["worker"] + cpu["postgres"] + cpu["redis"]


# (label, unit, limit, at most?, figure) — printed in this order, PASS/MISS beside each.
TARGETS = [
    (
        "CPU/request web+worker+pg+redis, c=50 · 0 ms",
        "ms",
        TARGET_CPU_MS,
        True,
        lambda s: stack_cpu_ms(s["c50_fast"]),
    ),
    (
        "added p50 at c=1 · 0 ms",
        "ms",
        TARGET_ADDED_P50_C1,
        True,
        lambda s: s["c1_fast"]["added_p50"],
    ),
    (
        "throughput ceiling, c=50 · 0 ms",
        "req/s",
        TARGET_CEILING_RPS,
        False,
        lambda s: s["c50_fast"]["through_rps"],
    ),
    (
        "added p50 at c=50 · 200 ms",
        "ms",
        TARGET_ADDED_P50_C50,
        True,
        lambda s: s["c50_slow"]["added_p50"],
    ),
    (
        "added p99 at c=50 · 200 ms",
        "ms",
        TARGET_ADDED_P99_C50,
        True,
        lambda s: s["c50_slow"]["added_p99"],
    ),
    ("async accepts, c=50", "/s", TARGET_ACCEPTS_PER_S, False, lambda s: s["async_accept"]["rps"]),
    ("backlog drained", "/s", TARGET_DRAIN_PER_S, False, lambda s: s["async_accept"]["drain_rps"]),
]


def target_verdicts(scenarios: dict) -> list[dict]:
    rows = []
    for label, unit, limit, at_most, figure in TARGETS:
        value = figure(scenarios)
        rows.append(
            {
                "label": label,
                "unit": unit,
                "limit": limit,
                "at_most": at_most,
                "value": value,
                "verdict": verdict(value, limit, at_most=at_most),
            }
        )
    return rows


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def latency_summary(values: list[float]) -> dict:
    return {
        "count": len(values),
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def verdict(value: float, limit: float, *, at_most: bool = True) -> str:
    if value is None or math.isnan(value):
        return "MISS"
    return "PASS" if (value <= limit if at_most else value >= limit) else "MISS"


def missed(results: dict) -> bool:
    """Any target of this run missed (for --strict)."""
    s = results["scenarios"]
    if "soak" in s:
        return any(figures["verdict"] == "MISS" for figures in s["soak"]["rss"].values())
    return s["waiters"]["verdict"] == "MISS" or any(t["verdict"] == "MISS" for t in s["targets"])


def _ms(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.1f}"


def _added(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+,.1f}"


def durability(results: dict) -> str:
    """Whether the run's PostgreSQL waited for the disk on each commit, as production does.
    Runs before stop 27 did not record it; their server skipped the flushes."""
    settings = results.get("database")
    if settings is None:
        return "PostgreSQL durability not recorded (runs before stop 27 skipped the flushes)"
    if all(settings[name] == "on" for name in ("fsync", "synchronous_commit")):
        return "PostgreSQL flushes each commit to disk"
    off = ", ".join(f"{name}={value}" for name, value in settings.items() if value != "on")
    return f"PostgreSQL NOT durable ({off}): figures flatter than production"


def _configuration(results: dict) -> str:
    config = results["config"]
    return (
        f"{results['machine']['cpus']} CPUs · web: uvicorn × {config['web_workers']} · worker: "
        f"{config.get('worker_processes', 1)} × {config['worker_concurrency']} threads · "
        f"DB pool {config['db_pool_max_size']} per process · {durability(results)}"
    )


def _table(header: tuple, rows: list[tuple], right: tuple = ()) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True)),
        "  ".join("-" * width for width in widths),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                str(cell).rjust(width) if i in right else str(cell).ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return lines


def _figure(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.0f} {unit}" if unit in ("req/s", "/s") else f"{value:,.1f} {unit}"


def render_targets(results: dict, before: dict | None = None) -> str:
    """Issue #17's targets, this run's figure beside each (and an earlier run's, if given)."""
    earlier = {}
    if before:
        rows_before = before["scenarios"].get("targets") or target_verdicts(before["scenarios"])
        earlier = {row["label"]: row for row in rows_before}
    rows = []
    for row in results["scenarios"]["targets"]:
        sign = "≤" if row["at_most"] else "≥"
        was = earlier.get(row["label"])
        rows.append(
            (
                row["label"],
                _figure(was["value"], row["unit"]) if was else "",
                _figure(row["value"], row["unit"]),
                f"{sign} {row['limit']:g} {row['unit']}",
                row["verdict"],
            )
        )
    header = ("issue #17 target", "before" if before else "", "now", "target", "")
    lines = [f"Targets · {_configuration(results)}"]
    if before and durability(before) != durability(results):
        lines.append(f"Before: {durability(before)}")
    lines += _table(header, rows, right=(1, 2))
    return "\n".join(lines)


def render_history(results: dict) -> str:
    h = results["scenarios"]["history"]
    seeded, quiet, during = h["seeded"], h["quiet"], h["during"]
    lines = [
        f"History: {seeded['requests']:,} finished requests with their attempts written before "
        f"measuring ({seeded['tables_mb']:,.0f} MB of tables, {seeded['seconds']:.0f} s), spread "
        f"over {seeded['retention_days'] + 1} days; the figures above were taken on top of them.",
        f"Retention purge of the day past the {seeded['retention_days']}-day window: "
        f"{h['deleted']['records']:,} requests deleted in {h['deleted']['seconds']:.1f} s "
        f"({h['purge_s']:.1f} s with the process's start) while async accepts ran at c=50:",
    ]
    rows = [
        (
            "before the purge",
            f"{quiet['rps']:,.0f}/s",
            _ms(quiet["latency"]["p50"]),
            _ms(quiet["latency"]["p99"]),
        ),
        (
            "during the purge",
            f"{during['rps']:,.0f}/s",
            _ms(during["latency"]["p50"]),
            _ms(during["latency"]["p99"]),
        ),
    ]
    lines += _table(("async accepts", "rate", "p50 ms", "p99 ms"), rows, right=(1, 2, 3))
    for when, locks in (("before", h["quiet_lock_waits"]), ("during", h["lock_waits"])):
        lines.append(
            f"PostgreSQL lock waits {when} the purge: {locks['waiting_samples']} of "
            f"{locks['samples']} samples (every 0.1 s) had a backend waiting, at most "
            f"{locks['most_waiting']} at once"
            + (f" {json.dumps(locks['by_type'])}" if locks["by_type"] else "")
        )
    return "\n".join(lines)


def render_soak(results: dict) -> str:
    soak = results["scenarios"]["soak"]
    lines = [
        f"Soak · {_configuration(results)} · other processes took "
        f"{100 * results['scenarios']['other_cpu_share']:.0f}% of the CPUs meanwhile",
        f"{soak['ok']:,}/{soak['requests']:,} wait-mode requests answered 200 at "
        f"c={results['config']['concurrency']} · 0 ms upstream, {soak['rps']:,.0f} req/s, "
        f"p50 {_ms(soak['latency']['p50'])} ms, p99 {_ms(soak['latency']['p99'])} ms; growth "
        f"counted after the first {soak['warmup_requests']:,.0f} requests",
    ]
    rows = [
        (
            name,
            f"{rss['start_mb']:.1f}",
            f"{rss['after_warmup_mb']:.1f}",
            f"{rss['end_mb']:.1f}",
            f"{rss['peak_mb']:.1f}",
            f"{rss['growth_mb']:+.1f}",
            f"≤ {TARGET_SOAK_GROWTH_MB:g}",
            rss["verdict"],
        )
        for name, rss in soak["rss"].items()
    ]
    header = ("RSS MB", "start", "after warm-up", "end", "peak", "growth", "target", "")
    lines += _table(header, rows, right=(1, 2, 3, 4, 5))
    lines.append(
        "RSS along the soak (requests: web / worker MB, worker threads): "
        + ", ".join(
            f"{sample['requests']:,}: {sample['web']:.0f}/{sample['worker']:.0f}"
            f" ({sample.get('worker_threads', '?')} threads)"
            for sample in soak["samples_mb"]
        )
    )
    return "\n".join(lines + _unexpected_lines(results))


def _unexpected_lines(results: dict) -> list[str]:
    lines = []
    for name, unexpected in results["errors"].items():
        if unexpected:
            counted = json.dumps(unexpected["counts"]) if unexpected["counts"] else "none counted"
            lines.append(
                f"unexpected answers in {name}: {counted} (warm-up ones are shown, not counted)"
            )
            for example in unexpected["examples"][:1]:
                lines.append(f"  e.g. {example['outcome']}: {example['detail']}")
    return lines


def render(results: dict, before: dict | None = None) -> str:
    if "soak" in results["scenarios"]:
        return render_soak(results)
    config, s = results["config"], results["scenarios"]
    c1, fast, slow = s["c1_fast"], s["c50_fast"], s["c50_slow"]
    accept, waiters = s["async_accept"], s["waiters"]
    cpu, churn = fast["cpu_ms_per_request"], fast["connections_per_request"]
    switches = fast.get("thread_switches_per_request")  # not in results before stop 14
    rows = [
        (
            "c=1 · 0 ms upstream",
            "p50 ms",
            _ms(c1["direct"]["p50"]),
            _ms(c1["through"]["p50"]),
            _added(c1["added_p50"]),
            f"≤ {TARGET_ADDED_P50_C1:g}",
            c1["verdict_p50"],
        ),
        (
            "",
            "p99 ms",
            _ms(c1["direct"]["p99"]),
            _ms(c1["through"]["p99"]),
            _added(c1["added_p99"]),
            "",
            "",
        ),
        (
            f"c={config['concurrency']} · 0 ms upstream",
            "throughput RPS",
            f"{fast['direct_rps']:,.0f}",
            f"{fast['through_rps']:,.0f}",
            "",
            "",
            "",
        ),
        (
            "",
            "p50 / p99 ms",
            f"{_ms(fast['direct']['p50'])} / {_ms(fast['direct']['p99'])}",
            f"{_ms(fast['through']['p50'])} / {_ms(fast['through']['p99'])}",
            "",
            "",
            "",
        ),
        (
            "",
            "CPU ms/request",
            "",
            f"{cpu['web'] + cpu['worker']:.1f}",
            f"web {cpu['web']:.1f} · worker {cpu['worker']:.1f}",
            "",
            "",
        ),
        (
            "",
            "  elsewhere",
            "",
            "",
            f"pg {cpu['postgres']:.1f} · redis {cpu['redis']:.1f} · beat {cpu['beat']:.1f}"
            f" · load generator {cpu['load']:.2f}",
            "",
            "",
        ),
        *(
            [
                (
                    "",
                    "thread switches/req",
                    "",
                    "",
                    f"web {switches['web']:.0f} · worker {switches['worker']:.0f}",
                    "",
                    "",
                )
            ]
            if switches
            else []
        ),
        (
            "",
            "new connections/req",
            "",
            "",
            f"pg {churn['postgres']:.2f} · redis {churn['redis']:.2f}",
            "",
            "",
        ),
        (
            f"c={config['concurrency']} · 200 ms upstream",
            "p50 ms",
            _ms(slow["direct"]["p50"]),
            _ms(slow["through"]["p50"]),
            _added(slow["added_p50"]),
            f"≤ {TARGET_ADDED_P50_C50:g}",
            slow["verdict_p50"],
        ),
        (
            "",
            "p99 ms",
            _ms(slow["direct"]["p99"]),
            _ms(slow["through"]["p99"]),
            _added(slow["added_p99"]),
            f"≤ {TARGET_ADDED_P99_C50:g}",
            slow["verdict_p99"],
        ),
        (
            "",
            "throughput RPS",
            f"{slow['direct_rps']:,.0f}",
            f"{slow['through_rps']:,.0f}",
            "",
            "",
            "",
        ),
        (
            f"async accept · c={config['concurrency']}",
            "202s per second",
            "",
            f"{accept['rps']:,.0f}",
            f"p50 {_ms(accept['latency']['p50'])} ms · p99 {_ms(accept['latency']['p99'])} ms",
            "",
            "",
        ),
        (
            "",
            "backlog run",
            "",
            f"{accept['drain_rps']:,.0f}/s",
            f"{accept['accepted']:,} requests, all done in {accept['drain_s']:.1f} s",
            "",
            "",
        ),
        (
            f"{config['waiters']} waiters · 2 s upstream",
            "served",
            f"{waiters['direct']['ok']}/{config['waiters']}",
            f"{waiters['through']['ok']}/{config['waiters']}",
            "",
            "all",
            waiters["verdict"],
        ),
        (
            "",
            "wall s",
            f"{waiters['direct']['wall_s']:.1f}",
            f"{waiters['through']['wall_s']:.1f}",
            "",
            "",
            "",
        ),
        (
            "",
            "web RSS MB",
            "",
            f"{waiters['web_peak_rss_mb']:.0f} peak",
            f"{waiters['web_rss_before_mb']:.0f} before",
            "",
            "",
        ),
    ]
    header = ("scenario", "figure", "direct", "through ReqRun", "added / detail", "target", "")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        f"ReqRun bench · {results['machine']['cpus']} CPUs · web workers "
        f"{config['web_workers']} · worker processes {config.get('worker_processes', 1)} · "
        f"worker threads {config['worker_concurrency']} · "
        f"DB pool {config['db_pool_max_size']} · "
        f"{config['rounds']} rounds{' · quick' if config['quick'] else ''} · other processes "
        f"took {100 * s['other_cpu_share']:.0f}% of the CPUs meanwhile",
        "  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True)),
        "  ".join("-" * width for width in widths),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                str(cell).ljust(width)
                if i in (0, 1, 5, 6)
                else str(cell).rjust(width)
                if i in (2, 3)
                else str(cell).ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    lines += _unexpected_lines(results)
    lines += ["", render_targets(results, before)]
    if "history" in s:
        lines += ["", render_history(results)]
    return "\n".join(lines)


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def _finite(value):
    """JSON has no NaN: a figure that could not be measured is null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write(results: dict, suffix: str = "") -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + suffix + ".json")
    path.write_text(json.dumps(_finite(results), indent=2) + "\n")
    return path
