"""Turning batches into figures: percentiles, the targets, the printed table and the JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# The first targets for this 2-core machine, in milliseconds.
TARGET_ADDED_P50_C1 = 10.0
TARGET_ADDED_P50_C50 = 20.0
TARGET_ADDED_P99_C50 = 100.0


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


def verdict(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "MISS"


def _ms(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:,.1f}"


def _added(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+,.1f}"


def render(results: dict) -> str:
    config, s = results["config"], results["scenarios"]
    c1, fast, slow = s["c1_fast"], s["c50_fast"], s["c50_slow"]
    accept, waiters = s["async_accept"], s["waiters"]
    cpu, churn = fast["cpu_ms_per_request"], fast["connections_per_request"]
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
            f"pg {cpu['postgres']:.1f} · redis {cpu['redis']:.1f} · beat {cpu['beat']:.1f}",
            "",
            "",
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
    for name, unexpected in results["errors"].items():
        if unexpected:
            counted = json.dumps(unexpected["counts"]) if unexpected["counts"] else "none counted"
            lines.append(
                f"unexpected answers in {name}: {counted} (warm-up ones are shown, not counted)"
            )
            for example in unexpected["examples"][:1]:
                lines.append(f"  e.g. {example['outcome']}: {example['detail']}")
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


def write(results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(_finite(results), indent=2) + "\n")
    return path
