"""The bench's load generator reads whole answers, and says when it did not get one."""

import asyncio
import json

from bench.load import Caller, Target, run_batch
from tests.fake_upstream import FakeUpstream


def batch(upstream: FakeUpstream, model: str, **fields) -> dict:
    return {
        "url": upstream.base_url + "/chat/completions",
        "headers": {"Authorization": "Bearer sk-test", "Content-Type": "application/json"},
        "body": json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        "timeout": 5.0,
        "expect": 200,
        **fields,
    }


def post(upstream: FakeUpstream, model: str) -> tuple[int, bytes]:
    async def once():
        caller = Caller()
        try:
            return await caller.post(Target.of(batch(upstream, model)), 5.0)
        finally:
            caller.close()

    return asyncio.run(once())


def test_a_closed_loop_counts_whole_answers_over_kept_alive_connections():
    callers = [Caller() for _ in range(4)]

    def local_ports() -> set[int]:
        return {
            connection.transport.get_extra_info("sockname")[1]
            for caller in callers
            for connection in caller.connections.values()
        }

    async def two_batches(upstream):
        first = await run_batch(callers, batch(upstream, "gpt", concurrency=4, duration=0.3))
        ports = local_ports()
        second = await run_batch(callers, batch(upstream, "gpt", concurrency=4, total=4))
        return first, ports, second

    with FakeUpstream() as upstream:
        first, ports, second = asyncio.run(two_batches(upstream))
        served = len(upstream.requests)
    assert first["surprises"] == []
    assert first["ok"] == first["outcomes"]["200"] > 20
    assert first["rps"] > 0
    assert second["outcomes"] == {"200": 4}
    assert served == first["all_answered"] + 4
    assert len(ports) == 4  # one connection per caller, kept alive across both batches
    assert local_ports() == ports


def test_an_answer_in_chunks_is_read_whole():
    with FakeUpstream() as upstream:
        upstream.answer_raw(
            "raw",
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n",
            b'6\r\n{"a": \r\n',
            b"2\r\n1}\r\n0\r\n\r\n",
        )
        status, body = post(upstream, "raw")
    assert (status, json.loads(body)) == (200, {"a": 1})


def test_a_cut_answer_and_an_error_are_surprises_that_say_what_came():
    with FakeUpstream() as upstream:
        upstream.answer_raw("cut", b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", b'{"partial')
        upstream.script("busy", "503")
        cut = asyncio.run(run_batch([Caller()], batch(upstream, "cut", concurrency=1, total=1)))
        busy = asyncio.run(run_batch([Caller()], batch(upstream, "busy", concurrency=1, total=1)))
    assert cut["ok"] == 0
    assert cut["surprises"][0]["outcome"] == "AnswerError"
    assert "closed before the answer ended" in cut["surprises"][0]["detail"]
    assert busy["outcomes"] == {"503": 1}
    assert busy["surprises"][0]["outcome"] == 503
    assert "error" in json.loads(busy["surprises"][0]["detail"])
