import logging
import time

import httpx
import pytest
import redis as redis_py

from core import heartbeats
from devstack.servers import EmbeddedRedis, free_port
from tests.conftest import record_every_heartbeat, wait_until
from tests.outage import database_outage, drop_every_other_connection, outage_web


def test_healthz_answers_when_the_process_is_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_postgres_redis_and_the_heartbeats(client):
    record_every_heartbeat()

    response = client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert 0 <= body["sweeper_last_seen_seconds_ago"] < 5
    assert 0 <= body["worker_last_seen_seconds_ago"] < 5


@pytest.mark.django_db
def test_readyz_names_the_sweeper_when_it_never_ran(client):
    heartbeats.record(heartbeats.WORKER)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["down"] == ["sweeper"]
    assert response.json()["sweeper_last_seen_seconds_ago"] is None


@pytest.mark.django_db
def test_readyz_names_the_sweeper_when_it_stopped_several_intervals_ago(client, settings):
    settings.REQRUN_SWEEP_INTERVAL_SECONDS = 2
    heartbeats.record(heartbeats.WORKER)
    heartbeats.record(heartbeats.SWEEPER, at=time.time() - 25)
    assert client.get("/readyz").status_code == 200  # a few slow sweeps are not an outage

    heartbeats.record(heartbeats.SWEEPER, at=time.time() - 31)

    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["down"] == ["sweeper"]
    assert 31 <= response.json()["sweeper_last_seen_seconds_ago"] < 35


@pytest.mark.django_db
def test_the_sweeper_allowance_grows_with_its_interval(client, settings):
    settings.REQRUN_SWEEP_INTERVAL_SECONDS = 10
    heartbeats.record(heartbeats.WORKER)
    heartbeats.record(heartbeats.SWEEPER, at=time.time() - 90)
    assert client.get("/readyz").status_code == 200

    heartbeats.record(heartbeats.SWEEPER, at=time.time() - 110)
    assert client.get("/readyz").json()["down"] == ["sweeper"]


@pytest.mark.django_db
def test_readyz_names_the_worker_when_its_heartbeat_is_stale(client, settings):
    settings.REQRUN_WATCHDOG_TIMEOUT_SECONDS = 60
    heartbeats.record(heartbeats.SWEEPER)
    heartbeats.record(heartbeats.WORKER, at=time.time() - 300)

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["down"] == ["worker"]
    assert 300 <= response.json()["worker_last_seen_seconds_ago"] < 305


@pytest.mark.django_db
def test_the_sweep_records_its_heartbeat(client):
    from requests_app.engine.recovery import sweep

    heartbeats.record(heartbeats.WORKER)
    assert client.get("/readyz").json()["down"] == ["sweeper"]

    sweep()

    assert client.get("/readyz").status_code == 200


@pytest.mark.django_db
def test_readyz_logs_a_change_of_state_once_not_every_probe(client, caplog):
    """A load balancer probes every few seconds: an outage is one warning naming what is
    down and its end one line, not an ERROR line per probe."""
    record_every_heartbeat()
    assert client.get("/readyz").status_code == 200  # whatever an earlier test left
    heartbeats.record(heartbeats.SWEEPER, at=time.time() - 3600)  # beat stopped an hour ago
    caplog.clear()

    with caplog.at_level(logging.INFO):
        answers = [client.get("/readyz").status_code for _ in range(3)]
        record_every_heartbeat()
        answers += [client.get("/readyz").status_code for _ in range(2)]

    assert answers == [503, 503, 503, 200, 200]
    lines = [
        (record.levelname, record.getMessage(), getattr(record, "down", None))
        for record in caplog.records
        if record.levelno >= logging.INFO
    ]
    assert lines == [("WARNING", "not ready", "sweeper"), ("INFO", "ready again", None)]


@pytest.mark.django_db
def test_readyz_names_redis_when_it_is_stopped(client, settings, tmp_path):
    record_every_heartbeat()
    redis = EmbeddedRedis(tmp_path, free_port())
    redis.start()
    settings.REDIS_URL = redis.url
    assert client.get("/readyz").status_code == 200

    redis.stop()

    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "down": ["redis"]}


@pytest.mark.django_db
@pytest.mark.parametrize("fault", ["out of memory", "read-only replica", "password"])
def test_readyz_names_redis_when_it_answers_but_refuses_writes(client, settings, tmp_path, fault):
    """A full Redis (noeviction), a replica after a failover and one that wants a password
    still answer PING or accept connections, yet refuse every request ReqRun would take."""
    record_every_heartbeat()
    redis = EmbeddedRedis(tmp_path / "primary", free_port())
    redis.start()
    replica = EmbeddedRedis(tmp_path / "replica", free_port())
    try:
        settings.REDIS_URL = redis.url
        assert client.get("/readyz").status_code == 200
        admin = redis_py.Redis.from_url(redis.url)
        if fault == "out of memory":
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")
        elif fault == "read-only replica":
            replica.start()
            redis_py.Redis.from_url(replica.url).replicaof("127.0.0.1", redis.port)
            settings.REDIS_URL = replica.url
        else:
            admin.config_set("requirepass", "s3cret")

        response = client.get("/readyz")
    finally:
        replica.stop()
        redis.stop()

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "down": ["redis"]}


@pytest.mark.timeout(120)
def test_readyz_names_postgres_at_once_when_it_is_down(transactional_db, tmp_path):
    record_every_heartbeat()
    web = outage_web(tmp_path / "web.log").start()  # the pool's own timeout: 30 s
    try:
        assert httpx.get(f"{web.url}/readyz").status_code == 200
        with database_outage():
            # The first probes find the pool's cut connections, later ones none to be had;
            # each must answer well before the pool would give up.
            answers = [httpx.get(f"{web.url}/readyz", timeout=5) for _ in range(4)]
        recovered = wait_until(
            lambda: httpx.get(f"{web.url}/readyz").status_code == 200,
            message="/readyz never recovered after the outage",
        )
    finally:
        web.stop()

    for response in answers:
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable", "down": ["postgres"]}
    assert recovered


def test_the_admin_index_shows_when_the_sweeper_and_workers_last_ran(operator_client):
    heartbeats.record(heartbeats.WORKER, at=time.time() - 5)

    page = operator_client.get("/admin/").content.decode()

    assert "Sweeper" in page and "never seen" in page
    assert "Workers" in page and "5 seconds ago" in page


def test_health_endpoints_are_not_redirected_to_https(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 301


@pytest.mark.timeout(120)
def test_readyz_is_ready_at_once_after_a_restart_cut_the_pools_connections(
    transactional_db, tmp_path
):
    record_every_heartbeat()
    web = outage_web(tmp_path / "web.log").start()
    try:
        for _ in range(3):  # the probe's pool now holds a connection to cut
            assert httpx.get(f"{web.url}/readyz").status_code == 200
        drop_every_other_connection()  # what a PostgreSQL restart does to them

        answers = [httpx.get(f"{web.url}/readyz", timeout=5).status_code for _ in range(3)]
    finally:
        web.stop()

    assert answers == [200, 200, 200]
