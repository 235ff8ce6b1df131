"""From raw batches to the figures in the table: merged percentiles, added latency, RPS,
CPU and new connections per request, and any answer that was not the expected one."""

from __future__ import annotations

import math
import os

from bench import report

# Process trees whose CPU is counted; "other" is the rest of the machine meanwhile.
CPU_GROUPS = ("web", "worker", "beat", "postgres", "redis", "upstreams", "load")


def _merged(batches: list[dict]) -> list[float]:
    return [value for batch in batches for value in batch["latencies_ms"]]


def _paired(side_batches: dict) -> dict:
    direct = report.latency_summary(_merged(side_batches["direct"]))
    through = report.latency_summary(_merged(side_batches["through"]))
    return {
        "direct": direct,
        "through": through,
        "added_p50": through["p50"] - direct["p50"],
        "added_p99": through["p99"] - direct["p99"],
        "direct_rps": _mean([b["rps"] for b in side_batches["direct"]]),
        "through_rps": _mean([b["rps"] for b in side_batches["through"]]),
        "per_round_rps": {
            side: [round(b["rps"], 1) for b in side_batches[side]] for side in ("direct", "through")
        },
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _cpu_per_request(batches: list[dict]) -> dict:
    requests = sum(batch["all_answered"] for batch in batches)
    return {
        group: 1000 * sum(batch["cpu_s"][group] for batch in batches) / max(1, requests)
        for group in CPU_GROUPS
    }


def _connections_per_request(batches: list[dict]) -> dict:
    requests = sum(batch["all_answered"] for batch in batches)
    return {
        server: sum(batch["connections_opened"][server] for batch in batches) / max(1, requests)
        for server in ("postgres", "redis")
    }


def _unexpected(batches: list[dict], expected: int) -> dict:
    """How many answers were not `expected`, by status or error, and what the first few said."""
    counts: dict[str, int] = {}
    for batch in batches:
        for outcome, count in batch["outcomes"].items():
            if outcome != str(expected):
                counts[outcome] = counts.get(outcome, 0) + count
    examples = [surprise for batch in batches for surprise in batch["surprises"]][:3]
    return {"counts": counts, "examples": examples} if counts or examples else {}


def figures(waiters_wanted: int, batches: dict) -> tuple[dict, dict]:
    c1, fast, slow = (_paired(batches[name]) for name in ("c1_fast", "c50_fast", "c50_slow"))
    c1["verdict_p50"] = report.verdict(c1["added_p50"], report.TARGET_ADDED_P50_C1)
    slow["verdict_p50"] = report.verdict(slow["added_p50"], report.TARGET_ADDED_P50_C50)
    slow["verdict_p99"] = report.verdict(slow["added_p99"], report.TARGET_ADDED_P99_C50)
    for scenario, name in ((c1, "c1_fast"), (fast, "c50_fast"), (slow, "c50_slow")):
        scenario["cpu_ms_per_request"] = _cpu_per_request(batches[name]["through"])
        scenario["connections_per_request"] = _connections_per_request(batches[name]["through"])
    accepts = batches["async_accept"]
    accepted = sum(batch["all_answered"] for batch in accepts)
    drain_s = sum(batch["drain_s"] for batch in accepts)
    waiters = batches["waiters"]
    all_served = waiters["through"]["ok"] == waiters_wanted
    errors = {
        name: _unexpected(batches[name]["direct"] + batches[name]["through"], 200)
        for name in ("c1_fast", "c50_fast", "c50_slow")
    }
    errors["async_accept"] = _unexpected(accepts, 202)
    errors["waiters"] = _unexpected([waiters["direct"], waiters["through"]], 200)
    every_batch = [waiters["direct"], waiters["through"], *accepts] + [
        batch
        for name in ("c1_fast", "c50_fast", "c50_slow")
        for side in batches[name].values()
        for batch in side
    ]
    return {
        "other_cpu_share": sum(batch["cpu_s"]["other"] for batch in every_batch)
        / sum(batch["elapsed_s"] * (os.cpu_count() or 1) for batch in every_batch),
        "c1_fast": c1,
        "c50_fast": fast,
        "c50_slow": slow,
        "async_accept": {
            "rps": _mean([batch["rps"] for batch in accepts]),
            "latency": report.latency_summary(_merged(accepts)),
            "accepted": accepted,
            "drain_s": drain_s,
            "drain_rps": accepted / drain_s if drain_s else math.nan,
            "left_pending": sum(batch["left_pending"] for batch in accepts),
            "cpu_ms_per_request": _cpu_per_request(accepts),
        },
        "waiters": {
            "direct": {"ok": waiters["direct"]["ok"], "wall_s": waiters["direct"]["wall_s"]},
            "through": {
                "ok": waiters["through"]["ok"],
                "wall_s": waiters["through"]["wall_s"],
                "latency": report.latency_summary(waiters["through"]["latencies_ms"]),
            },
            "web_rss_before_mb": waiters["web_rss_before"] / 2**20,
            "web_peak_rss_mb": waiters["web_peak_rss"] / 2**20,
            "verdict": "PASS" if all_served else "MISS",
        },
    }, errors
