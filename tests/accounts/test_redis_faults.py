"""Sign-in and the dashboard while ReqRun's Redis refuses it (full under `noeviction`, or
wanting a password): a 503 page that asks to retry, never a 500 or a traceback."""

import logging

import pytest
import redis as redis_py
from django.test import Client

from devstack.servers import EmbeddedRedis, free_port
from tests.factories import PASSWORD, UserFactory

REDIS_PASSWORD = "s3cret-never-logged"  # noqa: S105 - a test server's password


@pytest.fixture
def faulty_redis(tmp_path, settings):
    """A Redis of the test's own as the cache, so its faults reach no other test."""
    server = EmbeddedRedis(tmp_path / "redis", free_port())
    server.start()
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": server.url},
    }
    yield server
    server.stop()


def refuse(server: EmbeddedRedis, fault: str) -> None:
    admin = redis_py.Redis.from_url(server.url)
    if fault == "out of memory":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
    else:
        admin.config_set("requirepass", REDIS_PASSWORD)
        admin.connection_pool.disconnect()


@pytest.mark.django_db
@pytest.mark.parametrize("fault", ["out of memory", "password"])
def test_sign_in_while_redis_refuses_gets_a_503_page(faulty_redis, fault, caplog):
    user = UserFactory(email="alice@example.com")
    browser = Client(raise_request_exception=False)
    refuse(faulty_redis, fault)

    with caplog.at_level(logging.WARNING):
        response = browser.post("/accounts/login/", {"login": user.email, "password": PASSWORD})

    assert response.status_code == 503
    assert 1 <= int(response["Retry-After"]) <= 10
    assert b"try again" in response.content.lower()
    assert b"Traceback" not in response.content
    records = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert any(record.getMessage() == "dependency unavailable" for record in records)
    assert not any(record.levelno >= logging.ERROR for record in records)
    assert REDIS_PASSWORD not in caplog.text
