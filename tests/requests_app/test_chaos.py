"""The short chaos run: a bounded version of `make chaos` inside the suite."""

from types import SimpleNamespace

import pytest

from tests.chaos import count_outcomes, print_report, run


@pytest.mark.timeout(400)
def test_nothing_is_lost_or_spliced_when_workers_and_redis_die_under_load_and_streams():
    report = run(
        duration=20, rate=10, kill_every=4, workers=2, streams=10, redis_kills=1, settle_timeout=150
    )
    print_report(report)

    assert report["accepted"] >= 100
    assert report["worker_kills"] >= 4
    assert report["worker_kills_during_streams"] >= 3
    assert len(report["redis_kills"]) == 1
    assert report["redis_kills"][0]["requests_running"] > 0
    assert report["redis_kills"][0]["streams_in_flight"] > 0
    assert report["lost"] == 0
    assert report["process_exits"] == []  # the Redis kill took no worker down
    assert report["unexplained_duplicates"] == 0
    # Every accept counted once on the account's month, every ended request's slot given back.
    assert report["counter_drift"] == {"accepted_requests": 0, "pending": 0}
    # Every streaming client saw one attempt's whole answer or exactly one error event, and
    # each error stream's request is failed/partial (checked in stream_problems).
    assert report["streams"] >= 20
    # How many streams a kill lands in is chance: on a loaded machine every one may be hit
    # (complete streams are covered by test_streaming), but some must have been.
    assert report["streams_error"] >= 1
    assert report["streams_spliced"] == 0
    assert report["streams_broken"] == 0
    assert report["stream_problems"] == []
    assert report["streams"] == sum(
        report[f"streams_{kind}"] for kind in ("complete", "error", "not_streamed", "refused")
    )
    # Async requests meet only faults a retry gets past.
    assert report["async_succeeded"] == report["accepted"] - report["accepted_streams"]


def test_a_duplicate_is_explained_only_by_an_attempt_cut_off_mid_call():
    def attempt(outcome, error_code):
        return {"outcome": outcome, "status_code": None, "error_code": error_code}

    keys = {"by-worker": "req_a", "by-redis": "req_b", "by-nothing": "req_c"}
    upstream = SimpleNamespace(
        requests=[
            SimpleNamespace(path="/v1/chat/completions", body={"user": key}, step="200")
            for key in keys
            for _ in range(2)
        ]
    )
    final = {
        "by-worker": {
            "status": "succeeded",
            "attempts": [attempt("connection_error", "worker_lost")],
        },
        "by-redis": {
            "status": "succeeded",
            "attempts": [attempt("connection_error", "redis_unavailable")],
        },
        "by-nothing": {"status": "succeeded", "attempts": [attempt("success", None)] * 2},
    }

    report = count_outcomes(keys, final, upstream)

    explained = {d["idempotency_key"]: d["explanation"] for d in report["duplicates"]}
    assert explained["by-worker"] == "attempt in flight when its worker was killed"
    assert explained["by-redis"] == "attempt in flight when Redis was killed"
    assert explained["by-nothing"] == "UNEXPLAINED"
    assert report["unexplained_duplicates"] == 1
