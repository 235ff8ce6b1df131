"""allauth's login throttling, counted in the shared Redis cache so it holds across processes."""

import pytest
from django.core.cache import cache

from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_repeated_failed_logins_lock_the_address_out_for_a_while(client):
    UserFactory(email="gil@example.com")
    for _ in range(5):
        response = client.post(
            "/accounts/login/", {"login": "gil@example.com", "password": "wrong-password"}
        )
        assert response.status_code == 200
        assert "not correct" in response.content.decode()

    response = client.post("/accounts/login/", {"login": "gil@example.com", "password": PASSWORD})

    assert "too many failed login attempts" in response.content.decode().lower()
    assert "_auth_user_id" not in client.session
    redis = cache._cache.get_client()
    assert any(b"login_failed" in key for key in redis.keys("*"))
