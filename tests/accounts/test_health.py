import pytest

from devstack.servers import EmbeddedRedis, free_port


def test_healthz_answers_when_the_process_is_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_postgres_and_redis(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.django_db
def test_readyz_names_redis_when_it_is_stopped(client, settings, tmp_path):
    redis = EmbeddedRedis(tmp_path, free_port())
    redis.start()
    settings.REDIS_URL = redis.url
    assert client.get("/readyz").status_code == 200

    redis.stop()

    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "down": ["redis"]}


def test_health_endpoints_are_not_redirected_to_https(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 301
