"""The monthly counter under concurrency: a month's first burst is counted, never refused."""

import threading

import pytest
from django.db import connection, transaction

from projects.limits import count_accepted_request, usage_row
from tests.factories import AccountFactory

THREADS = 8
ROUNDS = 15


def burst(account, *, limit: int) -> list[bool]:
    """THREADS transactions that each count one request for `account` at the same moment."""
    start = threading.Barrier(THREADS)
    results: list[bool] = []

    def one():
        try:
            start.wait()
            with transaction.atomic():
                results.append(count_accepted_request(account=account, limit=limit))
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


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
