"""The monthly counter under concurrency: a month's first burst is counted, never refused;
and the migration that split the counters into stripes."""

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from core.stripes import STRIPES
from projects.limits import count_accepted_request, current_period_start, usage_row
from requests_app.engine import sql
from requests_app.models import PendingStripe
from tests.conftest import at_once
from tests.factories import AccountFactory

THREADS = 8
ROUNDS = 15


def burst(account, *, limit: int) -> list[bool]:
    """THREADS transactions that each count one request for `account` at the same moment."""

    def one() -> bool:
        with transaction.atomic():
            return count_accepted_request(account=account, limit=limit)

    return at_once(THREADS, one)


@pytest.mark.django_db(transaction=True)
def test_the_first_requests_of_a_month_are_all_counted():
    # A fresh account has no row for the month yet: concurrent first requests race to
    # create it, and none of them may be mistaken for "at the limit".
    for _ in range(ROUNDS):
        account = AccountFactory()
        assert burst(account, limit=1_000) == [True] * THREADS
        assert usage_row(account).accepted_requests == THREADS


@pytest.mark.django_db(transaction=True)
def test_a_burst_at_the_limit_counts_exactly_the_limit():
    account = AccountFactory()
    results = burst(account, limit=3)
    assert sorted(results) == [False] * (THREADS - 3) + [True] * 3
    assert usage_row(account).accepted_requests == 3


@pytest.mark.django_db(transaction=True)
def test_the_migrations_carry_each_count_into_its_stripes():
    account = AccountFactory()
    before = [
        ("projects", "0013_plan_price_id_paddles_and_unique"),
        ("requests_app", "0010_daily_usage_unreported"),
    ]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old_apps = executor.loader.project_state(before).apps
        old_apps.get_model("projects", "MonthlyUsage").objects.create(
            account_id=account.pk, period_start=current_period_start(), accepted_requests=7
        )
        old_apps.get_model("requests_app", "PendingCount").objects.create(
            account_id=account.pk, pending=3
        )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    assert usage_row(account).accepted_requests == 7
    assert sql.pending(account.pk) == 3
    # Every pending stripe exists: a request ending gives its slot back to any of them.
    assert PendingStripe.objects.filter(account=account).count() == STRIPES
