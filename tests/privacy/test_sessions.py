"""Sign-in sessions, and the address and browser kept with each, go once they have expired."""

from datetime import timedelta

import pytest
from allauth.usersessions.models import UserSession
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.utils import timezone

from privacy.tasks import sweep_privacy
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def signed_in_session(user, *, expires_in: timedelta) -> str:
    store = SessionStore()
    store["_auth_user_id"] = str(user.pk)
    store.create()
    Session.objects.filter(session_key=store.session_key).update(
        expire_date=timezone.now() + expires_in
    )
    UserSession.objects.create(
        user=user, session_key=store.session_key, ip="203.0.113.7", user_agent="Firefox"
    )
    return store.session_key


def test_the_privacy_sweep_deletes_expired_sessions_and_their_devices():
    user = UserFactory()
    expired = signed_in_session(user, expires_in=timedelta(seconds=-1))
    current = signed_in_session(user, expires_in=timedelta(days=1))

    sweep_privacy()

    assert list(Session.objects.values_list("session_key", flat=True)) == [current]
    assert list(UserSession.objects.values_list("session_key", flat=True)) == [current]
    assert expired not in UserSession.objects.values_list("session_key", flat=True)
