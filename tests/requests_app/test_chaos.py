"""The short chaos run: a bounded version of `make chaos` inside the suite."""

import pytest

from tests.chaos import print_report, run


@pytest.mark.timeout(400)
def test_no_request_is_lost_when_workers_die_and_redis_restarts():
    report = run(duration=15, rate=10, kill_every=3, workers=2, settle_timeout=150)
    print_report(report)

    assert report["accepted"] >= 100
    assert report["worker_kills"] >= 4
    assert report["redis_restarts"] == 1
    assert report["lost"] == 0
    assert report["unexplained_duplicates"] == 0
    assert report["succeeded"] == report["accepted"]
