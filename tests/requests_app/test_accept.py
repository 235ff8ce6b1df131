"""The accept: quota, pending slot and insert in one statement once the account's counters
exist, and the step-by-step transaction (with its errors) whenever that statement cannot."""

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.stripes import STRIPES
from projects.limits import accepted_requests, limits_for
from projects.models import Project, UsageStripe
from requests_app.api.serializers import request_object
from requests_app.engine import sql
from requests_app.engine.accept import accept_request
from requests_app.errors import InvalidApiKey, PendingQueueFull, QuotaExceeded
from requests_app.models import PendingStripe, Request
from tests.conftest import at_once
from tests.factories import make_counter_stripes
from tests.requests_app.conftest import Tenant

BODY = b'{"model": "gpt-4o-mini", "messages": []}'


def accept(tenant: Tenant, limits=None):
    return accept_request(
        api_key=tenant.api_key,
        endpoint="/v1/chat/completions",
        body=BODY,
        payload={"model": "gpt-4o-mini"},
        idempotency_key=None,
        limits=limits or limits_for(tenant.account),
    )


@pytest.fixture
def tenant(transactional_db):
    # No worker of its own, but the session's is up if another module started it: with no
    # concurrency slot for the account it starts none of the requests accepted here, which
    # stay queued (pending) whatever the tests do with them (cancel, change, count them).
    tenant = Tenant(email="accept@example.com", upstream_url="http://127.0.0.1:9/v1")
    tenant.override(concurrency=0)
    return tenant


def test_once_the_counters_exist_an_accept_is_one_statement(tenant):
    accept(tenant)  # the month's and the account's first: their rows are created
    limits = limits_for(tenant.account)

    with CaptureQueriesContext(connection) as queries:
        accepted = accept(tenant, limits)

    assert len(queries) == 1
    assert accepted.outcome == "created"
    assert Request.objects.get(pk=accepted.request.pk).account_id == tenant.account.pk
    assert accepted_requests(tenant.account) == 2
    assert sql.pending(tenant.account.pk) == 2


def test_the_202_body_of_a_new_request_needs_no_query(tenant):
    accepted = accept(tenant)

    with CaptureQueriesContext(connection) as queries:
        body = request_object(accepted.request)

    assert len(queries) == 0
    assert body["attempts"] == [] and body["status"] == "queued"
    assert body == request_object(Request.objects.get(pk=accepted.request.pk))


def test_a_full_pending_queue_refuses_and_counts_nothing(tenant):
    tenant.override(pending_requests=2)
    accept(tenant)
    accept(tenant)

    with pytest.raises(PendingQueueFull):
        accept(tenant)

    assert Request.objects.count() == 2
    assert accepted_requests(tenant.account) == 2
    assert sql.pending(tenant.account.pk) == 2


def test_a_pending_cap_of_zero_refuses_the_accounts_very_first_request(tenant):
    tenant.override(pending_requests=0)  # an operator holding an account's intake

    with pytest.raises(PendingQueueFull):
        accept(tenant)

    assert not Request.objects.exists()
    assert accepted_requests(tenant.account) == 0
    assert sql.pending(tenant.account.pk) == 0


def test_a_used_up_quota_refuses_and_takes_no_slot(tenant):
    tenant.override(monthly_requests=1)
    accept(tenant)

    with pytest.raises(QuotaExceeded):
        accept(tenant)

    assert Request.objects.count() == 1
    assert sql.pending(tenant.account.pk) == 1


def test_a_refusal_inside_a_callers_transaction_leaves_it_usable(tenant):
    tenant.override(pending_requests=1)
    accept(tenant)

    with transaction.atomic():
        with pytest.raises(PendingQueueFull):
            accept(tenant)
        assert Request.objects.count() == 1  # the transaction still answers

    assert accepted_requests(tenant.account) == 1


def test_a_key_stays_with_its_request_past_24_hours_until_it_finishes(tenant):
    def keyed():
        return accept_request(
            api_key=tenant.api_key,
            endpoint="/v1/chat/completions",
            body=BODY,
            payload={"model": "gpt-4o-mini"},
            idempotency_key="long-runner",
        )

    first = keyed()
    # A deadline may be 24 h, so its last attempt can still run past the key's window.
    day_ago = timezone.now() - timedelta(hours=24, minutes=1)
    Request.objects.filter(pk=first.request.pk).update(status="running", created_at=day_ago)

    again = keyed()

    assert (again.outcome, again.request.pk) == ("attached", first.request.pk)
    Request.objects.filter(pk=first.request.pk).update(status="succeeded")
    assert keyed().outcome == "created"  # finished and past the window: the key is free
    assert Request.objects.count() == 2


@pytest.mark.parametrize("counters_exist", [True, False], ids=["one-statement", "in-steps"])
def test_a_key_whose_project_was_deleted_after_it_authenticated_is_refused(tenant, counters_exist):
    # The race: the key authenticated, then the project (and the key) went before the insert.
    limits = limits_for(tenant.account)
    if counters_exist:
        # Made as the account's first accept leaves them, but with no request: one accepted
        # here is published, and the session's worker could open an attempt on it while
        # this test deleted it (a foreign-key violation, in a run where it is up).
        make_counter_stripes(tenant.account)
    Project.objects.filter(pk=tenant.project.pk).delete()  # another process; ours keeps its copy

    with pytest.raises(InvalidApiKey):
        accept(tenant, limits)

    assert not Request.objects.exists()
    assert sql.pending(tenant.account.pk) == 0


def accept_at_once(tenant: Tenant, calls: int) -> list[str]:
    """`calls` accepts at the same moment, each on its own connection: what each became."""
    limits = limits_for(tenant.account)

    def one() -> str:
        try:
            accept(tenant, limits)
        except (PendingQueueFull, QuotaExceeded) as refused:
            return refused.code
        return "accepted"

    return sorted(at_once(calls, one))


def fill_all_but(stripes, *, cap: int, room: dict[int, int], column: str) -> None:
    """Each stripe of a count at its share of `cap`, but stripe k with room[k] units left."""
    for row in stripes:
        share = (cap + STRIPES - 1 - row.stripe) // STRIPES
        setattr(row, column, share - room.get(row.stripe, 0))
        row.save(update_fields=[column])


@pytest.mark.parametrize("limit", ["pending_requests", "monthly_requests"])
def test_concurrent_accepts_take_exactly_the_room_left_in_the_stripes(tenant, limit):
    # Shares of 3 and 4 (the cap is no multiple of the stripes); 5 units left, in two
    # stripes only, for 20 accepts at once: every one of them wants those two rows.
    cap = 3 * STRIPES + 7
    make_counter_stripes(tenant.account)
    tenant.override(**{limit: cap})
    if limit == "pending_requests":
        counted = PendingStripe.objects.filter(account=tenant.account)
        fill_all_but(counted, cap=cap, room={5: 2, STRIPES - 1: 3}, column="pending")
    else:
        counted = UsageStripe.objects.filter(account=tenant.account)
        fill_all_but(counted, cap=cap, room={5: 2, STRIPES - 1: 3}, column="accepted")

    outcomes = accept_at_once(tenant, 20)

    refusal = "pending_queue_full" if limit == "pending_requests" else "monthly_quota_exceeded"
    assert outcomes == ["accepted"] * 5 + [refusal] * 15
    assert Request.objects.count() == 5
    if limit == "pending_requests":
        assert (sql.pending(tenant.account.pk), accepted_requests(tenant.account)) == (cap, 5)
    else:
        assert (accepted_requests(tenant.account), sql.pending(tenant.account.pk)) == (cap, 5)


def test_slots_given_back_to_other_stripes_than_they_came_from_still_free_the_cap(tenant):
    # A request gives its slot back to the stripe of its id, not the one it took: the
    # stripes drift apart (some below zero) while their sum stays the count.
    cap = STRIPES + 3
    tenant.override(pending_requests=cap)
    first = [accept(tenant).request for _ in range(cap)]
    with pytest.raises(PendingQueueFull):
        accept(tenant)

    for request in first[:-1]:
        assert sql.cancel(request_id=request.pk, now=timezone.now()) == "canceled"

    assert sql.pending(tenant.account.pk) == 1
    assert len([accept(tenant) for _ in range(cap - 1)]) == cap - 1
    with pytest.raises(PendingQueueFull):
        accept(tenant)
    assert sql.pending(tenant.account.pk) == cap
