"""PreparedGet: the hot lookups compiled once must answer exactly as the ORM does."""

import threading

import pytest
from django.db import connection, connections
from django.db.models import F
from django.db.models.expressions import RawSQL

from core.prepared import PreparedGet, insert, together
from projects.limits import PLAN_STATE_RELATED, plan_state_of
from projects.models import AccountPlan, ApiKey, Upstream
from requests_app.engine.executor import REQUEST_TO_RUN
from requests_app.engine.failover import REQUESTS_UPSTREAMS
from requests_app.models import Request
from tests.factories import ApiKeyFactory, RequestFactory

pytestmark = pytest.mark.django_db

KEY_WITH_PLAN = PreparedGet(
    lambda prefix: ApiKey.objects.select_related(
        "project", "project__account", f"project__account__{PLAN_STATE_RELATED}"
    ).filter(prefix=prefix, revoked_at__isnull=True),
    prefix="",
)


def test_same_instance_and_related_objects_as_the_orm_in_one_query(django_assert_num_queries):
    key = ApiKeyFactory()
    plan_state_of(key.project.account)
    AccountPlan.objects.filter(account=key.project.account).update(requests_per_minute=7)
    expected = ApiKey.objects.get(pk=key.pk)

    with django_assert_num_queries(1):
        found = KEY_WITH_PLAN.get(prefix=key.prefix)
        # Everything select_related named is already there: no further query.
        plan_state = found.project.account.plan_state
        assert plan_state.plan.code == "free"

    assert found.pk == expected.pk
    assert found.secret_sha256 == expected.secret_sha256
    assert found.created_at == expected.created_at  # converters applied: aware datetime
    assert found.project.public_id == key.project.public_id
    assert plan_state.requests_per_minute == 7
    assert found._state.adding is False and found._state.db == "default"


def test_values_change_between_calls_and_filters_still_apply():
    first, second = ApiKeyFactory(), ApiKeyFactory()
    assert KEY_WITH_PLAN.get(prefix=first.prefix).pk == first.pk
    assert KEY_WITH_PLAN.get(prefix=second.prefix).pk == second.pk
    ApiKey.objects.filter(pk=first.pk).update(revoked_at=second.created_at)
    with pytest.raises(ApiKey.DoesNotExist):
        KEY_WITH_PLAN.get(prefix=first.prefix)
    with pytest.raises(ApiKey.DoesNotExist):
        KEY_WITH_PLAN.get(prefix="no-such-prefix")


def test_json_fields_are_decoded_like_the_orm_does():
    request = RequestFactory(response_headers={"x-request-id": "abc"}, usage={"total_tokens": 3})
    lookup = PreparedGet(lambda pk: Request.objects.filter(pk=pk), pk=0)
    found = lookup.get(pk=request.pk)
    assert found.response_headers == {"x-request-id": "abc"}
    assert found.usage == {"total_tokens": 3}
    assert found.project_id == request.project_id


def test_annotations_are_set_like_the_orm_does():
    request = RequestFactory(attempt_count=2)
    lookup = PreparedGet(
        lambda pk: Request.objects.annotate(doubled=F("attempt_count") * 2).filter(pk=pk), pk=0
    )
    found = lookup.get(pk=request.pk)
    assert (
        found.doubled
        == Request.objects.annotate(doubled=F("attempt_count") * 2).get(pk=request.pk).doubled
        == 4
    )


def test_more_than_one_row_is_an_error_as_with_get():
    first = RequestFactory()
    RequestFactory(project=first.project, account=first.account)
    by_project = PreparedGet(lambda project: Request.objects.filter(project_id=project), project=0)
    with pytest.raises(Request.MultipleObjectsReturned):
        by_project.get(project=first.project_id)


def test_a_placeholder_that_cannot_be_found_is_refused_at_compile_time():
    RequestFactory()
    ignores_its_value = PreparedGet(lambda pk: Request.objects.all(), pk=0)
    with pytest.raises(ValueError, match="appears 0 times"):
        ignores_its_value.get(pk=1)


def test_threads_share_one_compilation_and_query_on_their_own_connections(transactional_db):
    key = ApiKeyFactory()
    builds = []

    def build(prefix):
        builds.append(prefix)
        return ApiKey.objects.select_related("project").filter(prefix=prefix)

    lookup = PreparedGet(build, prefix="")
    found, wrappers = [], []

    def look_up():
        found.append(lookup.get(prefix=key.prefix).project.public_id)
        wrappers.append(connections["default"])  # this thread's own; kept, so ids stay unique
        connection.close()

    threads = [threading.Thread(target=look_up) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [key.project.public_id] * 3
    assert len(builds) == 1  # compiled once, not once per thread
    assert len({id(wrapper) for wrapper in wrappers}) == 3


def test_together_answers_as_each_lookup_alone():
    request = RequestFactory()
    for name, position, enabled in (("first", 1, True), ("off", 2, False), ("second", 3, True)):
        request.project.upstreams.create(
            name=name, base_url="https://api.example.com/v1", position=position, enabled=enabled
        )
    other = RequestFactory()

    found, upstreams = together(
        (REQUEST_TO_RUN, {"pk": request.pk}), (REQUESTS_UPSTREAMS, {"request_pk": request.pk})
    )

    assert [row.pk for row in found] == [REQUEST_TO_RUN.get(pk=request.pk).pk]
    assert found[0].project.public_id == request.project.public_id  # related objects too
    expected = Upstream.objects.filter(project=request.project, enabled=True)
    assert [row.name for row in upstreams] == [
        row.name for row in expected.order_by("position", "pk")
    ]
    assert [row.name for row in upstreams][-2:] == ["first", "second"]
    assert together((REQUESTS_UPSTREAMS, {"request_pk": other.pk}))[0] != upstreams
    missing = together((REQUEST_TO_RUN, {"pk": -1}), (REQUESTS_UPSTREAMS, {"request_pk": -1}))
    assert missing == [[], []]


def test_together_sends_its_statements_in_one_batch(transactional_db):
    """Out of a transaction each statement is its own; sent together they share the one
    implicit transaction that ends at the batch's sync, so they were sent as one batch."""
    request = RequestFactory()
    with_transaction_id = PreparedGet(
        lambda pk: Request.objects.annotate(txid=RawSQL("txid_current()", [])).filter(pk=pk),
        pk=0,
    )
    alone = [with_transaction_id.get(pk=request.pk).txid for _ in range(2)]
    assert alone[0] != alone[1]

    first, second = together(
        (with_transaction_id, {"pk": request.pk}), (with_transaction_id, {"pk": request.pk})
    )
    assert first[0].txid == second[0].txid


def test_insert_stores_what_create_would_and_sets_the_primary_key():
    template = RequestFactory.build(project=ApiKeyFactory().project)
    template.account = template.project.account
    template.usage = {"total_tokens": 5}
    template.request_body = b"\x00secret"
    insert(template)

    assert template.pk is not None and template._state.adding is False
    assert template.created_at is not None  # auto_now_add filled by pre_save
    stored = Request.objects.get(pk=template.pk)
    assert stored.public_id == template.public_id
    assert stored.created_at == template.created_at
    assert stored.usage == {"total_tokens": 5}
    assert bytes(stored.request_body) == b"\x00secret"
    assert stored.status == "queued" and stored.attempt_count == 0  # model defaults
