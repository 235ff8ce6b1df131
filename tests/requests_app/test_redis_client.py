"""The engine's one Redis client per process, made on first use.

Two threads meeting a fresh process (a web's first two calls, a worker's first two tasks)
must not each make a client: the one overwritten is garbage-collected, and redis-py then
closes its connection pool, sockets in use included, under the other thread's command (a
caller's 503 after a 5-second timeout, seen in CI once the web had just started).
"""

import sys
import threading

import pytest

from requests_app.engine import redis_client


@pytest.fixture
def eager_thread_switches():
    """The interpreter hands the GIL around every microsecond, not every 5 ms, so a race
    that needs a switch at one exact line shows up in a few tries."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.parametrize("attempt", range(5))
def test_threads_meeting_a_fresh_process_share_one_client(
    monkeypatch, eager_thread_switches, attempt
):
    monkeypatch.setattr(redis_client, "_client", None)
    threads = 16
    start = threading.Barrier(threads)
    made, errors = [], []

    def first_use():
        start.wait()
        try:
            # As authentication does: a pipeline taken from the client, sent after.
            with redis_client.client().pipeline(transaction=False) as pipe:
                pipe.incr("reqrun:test:first-use")
                pipe.execute()
            made.append(redis_client.client())
        except Exception as error:  # noqa: BLE001 - what the caller would have got
            errors.append(repr(error))

    runners = [threading.Thread(target=first_use) for _ in range(threads)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(10)

    assert errors == []
    assert len({id(client) for client in made}) == 1
