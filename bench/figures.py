"""From raw batches to the figures in the table: merged percentiles, added latency, RPS,
CPU and new connections per request, and any answer that was not the expected one."""

from __future__ import annotations

import math
import os

from bench import report

# Process trees whose CPU is counted; "other" is the rest of the machine meanwhile.
CPU_GROUPS = ("web", "worker", "beat", "postgres", "redis", "upstreams", "load")
# Thread context switches per request: what the GIL and blocking I/O cost beyond the
# Python a profiler sees (a switch is a thread blocked or preempted).
SWITCH_GROUPS = ("web", "worker")


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


def _switches_per_request(batches: list[dict]) -> dict:
    requests = sum(batch["all_answered"] for batch in batches)
    return {
        group: sum(batch["thread_switches"][group] for batch in batches) / max(1, requests)
        for group in SWITCH_GROUPS
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
        scenario["thread_switches_per_request"] = _switches_per_request(batches[name]["through"])
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
    scenarios = {
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
    }
    if "history" in batches:
        scenarios["history"] = _history(batches["history"])
        errors["purge"] = _unexpected(
            batches["history"]["quiet"] + batches["history"]["during"], 202
        )
    scenarios["targets"] = report.target_verdicts(scenarios)
    return scenarios, errors


def _history(run: dict) -> dict:
    """Accepts before and during the retention purge of one day of the seeded history."""

    def accepts(batches: list[dict]) -> dict:
        return {
            "rps": _mean([batch["rps"] for batch in batches]),
            "latency": report.latency_summary(_merged(batches)),
        }

    return {
        "seeded": run["seeded"],
        "purge_s": run["purge_s"],
        "deleted": run["deleted"],
        "lock_waits": run["lock_waits"],
        "quiet_lock_waits": run["quiet_lock_waits"],
        "quiet": accepts(run["quiet"]),
        "during": accepts(run["during"]),
    }


def soak_figures(run: dict) -> tuple[dict, dict]:
    """RSS growth of web and worker from the end of the soak's warm-up to its end."""
    samples = run["samples"]
    warm = next(s for s in samples if s["requests"] >= run["warmup_requests"])
    growth = {
        name: {
            "start_mb": samples[0][name] / 2**20,
            "after_warmup_mb": warm[name] / 2**20,
            "end_mb": samples[-1][name] / 2**20,
            "peak_mb": max(s[name] for s in samples) / 2**20,
            "growth_mb": (samples[-1][name] - warm[name]) / 2**20,
        }
        for name in ("web", "worker")
    }
    for figures_of in growth.values():
        figures_of["verdict"] = report.verdict(
            figures_of["growth_mb"], report.TARGET_SOAK_GROWTH_MB
        )
    batches = run["batches"]
    scenarios = {
        "other_cpu_share": sum(b["cpu_s"]["other"] for b in batches)
        / sum(b["elapsed_s"] * (os.cpu_count() or 1) for b in batches),
        "soak": {
            "requests": sum(b["all_answered"] for b in batches),
            "ok": sum(b["ok"] for b in batches),
            "rps": sum(b["all_answered"] for b in batches) / sum(b["wall_s"] for b in batches),
            "latency": report.latency_summary(_merged(batches)),
            "cpu_ms_per_request": _cpu_per_request(batches),
            "warmup_requests": run["warmup_requests"],
            "rss": growth,
            "samples_mb": [
                {
                    "requests": s["requests"],
                    "web": s["web"] / 2**20,
                    "worker": s["worker"] / 2**20,
                    "worker_threads": s["worker_threads"],
                }
                for s in samples
            ],
        },
    }
    return scenarios, {"soak": _unexpected(batches, 200)}
