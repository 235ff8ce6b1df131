"""`make bench --history` writes finished requests with raw SQL that names the request
table's columns; the suite does not run the bench, so this keeps the two in step."""

import pytest
from django.db import connection

from bench.history import SEED, key_prefix
from requests_app.models import Attempt, Request
from tests.factories import ApiKeyFactory

pytestmark = pytest.mark.django_db


def test_the_history_seed_writes_finished_requests_with_their_attempts():
    api_key = ApiKeyFactory()
    with connection.cursor() as cursor:
        cursor.execute(
            SEED,
            {
                "prefix": key_prefix(api_key.raw_key),
                "first": 1,
                "last": 10,
                "total": 10,
                "span": "4 days",
            },
        )

    written = Request.objects.filter(project=api_key.project)
    assert written.filter(status="succeeded", finished_at__isnull=False).count() == 10
    assert Attempt.objects.filter(request__in=written, outcome="success").count() == 10
