"""A Redis that answers but refuses what it is asked (out of memory under `noeviction`, a
read-only replica after a failover, a password ReqRun does not send) is answered as an
outage: a 503 in OpenAI's envelope with `Retry-After`, never a 500 of our own."""

import httpx
import pytest
import redis as redis_py

from devstack.servers import EmbeddedRedis, free_port
from tests.conftest import ProcfileWeb
from tests.requests_app.conftest import Tenant
from tests.requests_app.test_outages import assert_unavailable, post_chat

PASSWORD = "s3cret-never-logged"  # noqa: S105 - a test server's password


@pytest.fixture
def customer(transactional_db, fake_upstream):
    fake_upstream.reset()
    return Tenant(email="alice@example.com", upstream_url=fake_upstream.base_url)


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of the test's own, so its faults reach no other test."""
    server = EmbeddedRedis(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


def out_of_memory(server: EmbeddedRedis) -> None:
    """Every write is refused with OOM, as a full Redis under `noeviction` answers."""
    admin = redis_py.Redis.from_url(server.url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    with pytest.raises(redis_py.exceptions.OutOfMemoryError):
        admin.set("reqrun:probe", "1")


def read_only_replica(tmp_path, primary: EmbeddedRedis) -> EmbeddedRedis:
    """A replica of `primary`: it answers reads and refuses every write with READONLY."""
    replica = EmbeddedRedis(tmp_path / "replica", free_port())
    replica.start()
    redis_py.Redis.from_url(replica.url).replicaof("127.0.0.1", primary.port)
    return replica


def get_request(url: str, customer: Tenant, request_id: str) -> httpx.Response:
    return httpx.get(
        f"{url}/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {customer.raw_key}"},
        timeout=60,
    )


def assert_no_error_of_ours(web: ProcfileWeb) -> str:
    log = web.log_path.read_text()
    assert "unhandled API error" not in log
    assert "Traceback" not in log
    assert PASSWORD not in log
    return log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefer", [{"Prefer": "respond-async"}, {}])
def test_calls_while_redis_is_out_of_memory_get_a_503_to_retry(
    customer, own_redis, tmp_path, prefer
):
    web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=own_redis.url).start()
    try:
        accepted = post_chat(web.url, customer, Prefer="respond-async")
        assert accepted.status_code == 202
        out_of_memory(own_redis)

        response = post_chat(web.url, customer, **prefer)
        reading = get_request(web.url, customer, accepted.json()["id"])
    finally:
        web.stop()

    assert_unavailable(response)
    assert reading.status_code in (200, 503), reading.text
    if reading.status_code == 503:
        assert_unavailable(reading)
    log = assert_no_error_of_ours(web)
    assert "dependency unavailable" in log


@pytest.mark.timeout(120)
def test_calls_to_a_read_only_replica_get_a_503_to_retry(customer, own_redis, tmp_path):
    replica = read_only_replica(tmp_path, own_redis)
    web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=replica.url).start()
    try:
        response = post_chat(web.url, customer, Prefer="respond-async")
    finally:
        web.stop()
        replica.stop()

    assert_unavailable(response)
    assert "dependency unavailable" in assert_no_error_of_ours(web)


@pytest.mark.timeout(120)
def test_calls_when_redis_wants_a_password_get_a_503_to_retry(customer, own_redis, tmp_path):
    web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=own_redis.url).start()
    try:
        assert post_chat(web.url, customer, Prefer="respond-async").status_code == 202
        redis_py.Redis.from_url(own_redis.url).config_set("requirepass", PASSWORD)
        # Connections already open stay signed in; a restart of the web or Redis drops them.
        wrong = ProcfileWeb(
            tmp_path / "wrong.log",
            REDIS_URL=f"redis://:not-{PASSWORD}@127.0.0.1:{own_redis.port}/0",
        ).start()
        try:
            wrong_password = post_chat(wrong.url, customer, Prefer="respond-async")
        finally:
            wrong.stop()
        none = ProcfileWeb(tmp_path / "none.log", REDIS_URL=own_redis.url).start()
        try:
            no_password = post_chat(none.url, customer, Prefer="respond-async")
        finally:
            none.stop()
    finally:
        web.stop()

    assert_unavailable(wrong_password)
    assert_unavailable(no_password)
    assert_no_error_of_ours(wrong)
    assert_no_error_of_ours(none)
