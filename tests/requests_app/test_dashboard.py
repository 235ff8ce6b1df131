"""The dashboard's request and usage pages: tenancy, filters, pagination, retention notes."""

import json
import logging
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.urls import reverse
from django.utils import timezone

from core import encryption
from requests_app.engine.retention import purge_expired_data
from requests_app.models import Request
from tests.factories import (
    AttemptFactory,
    ProjectFactory,
    RequestFactory,
    set_accepted_requests,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(alice_account):
    return ProjectFactory(account=alice_account, name="Chatbot")


def request_id(number: int) -> str:
    """Ids in creation order, as the real ones are."""
    return f"req_{number:012x}{'0' * 16}"


def make_requests(project, count: int, **fields) -> list[Request]:
    return [
        RequestFactory(project=project, public_id=request_id(n), **fields)
        for n in range(1, count + 1)
    ]


def shown_ids(response) -> list[str]:
    return [record.public_id for record in response.context["page"].requests]


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# ----- tenancy -----------------------------------------------------------------------


def test_another_tenant_gets_404_on_every_request_url(client, charlie, project):
    record = RequestFactory(project=project)
    client.force_login(charlie)

    urls = [
        ("get", reverse("request-list", args=[project.public_id])),
        ("get", reverse("request-detail", args=[record.public_id])),
        ("post", reverse("request-cancel", args=[record.public_id])),
        ("get", reverse("request-detail", args=["req_doesnotexist"])),
    ]
    for method, url in urls:
        response = getattr(client, method)(url)
        assert response.status_code == 404, url
        assert b"site-footer" in response.content  # the 404 page in the site's layout
    record.refresh_from_db()
    assert record.status == "queued"


def test_usage_shows_only_the_current_accounts_projects(client, charlie, project):
    RequestFactory(project=project, usage={"total_tokens": 99})
    client.force_login(charlie)

    response = client.get(reverse("usage"))

    assert response.status_code == 200
    assert b"Chatbot" not in response.content
    assert response.context["report"].totals == {"requests": 0, "tokens": 0, "unreported": 0}


def test_a_member_sees_requests_but_only_managers_cancel(client, bob, project):
    record = RequestFactory(project=project)
    client.force_login(bob)

    assert client.get(reverse("request-detail", args=[record.public_id])).status_code == 200
    response = client.post(reverse("request-cancel", args=[record.public_id]))

    assert response.status_code == 403
    record.refresh_from_db()
    assert record.status == "queued"


def test_an_owner_cancels_a_queued_request(client, alice, project):
    record = RequestFactory(project=project)
    client.force_login(alice)

    response = client.post(reverse("request-cancel", args=[record.public_id]), follow=True)

    record.refresh_from_db()
    assert record.status == "canceled"
    assert any("Cancel requested" in m for m in messages_of(response))


def test_signed_out_visitors_are_sent_to_sign_in(client, project):
    response = client.get(reverse("request-list", args=[project.public_id]))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# ----- list: filters and pagination --------------------------------------------------


def test_list_filters_by_status_endpoint_and_search(client, alice, project):
    chat = RequestFactory(project=project, status="succeeded", idempotency_key="order-7")
    embeddings = RequestFactory(project=project, status="failed", endpoint="/v1/embeddings")
    client.force_login(alice)
    url = reverse("request-list", args=[project.public_id])

    assert shown_ids(client.get(url, {"status": "failed"})) == [embeddings.public_id]
    assert shown_ids(client.get(url, {"endpoint": "/v1/chat/completions"})) == [chat.public_id]
    assert shown_ids(client.get(url, {"q": "order-7"})) == [chat.public_id]
    assert shown_ids(client.get(url, {"q": embeddings.public_id})) == [embeddings.public_id]
    response = client.get(url, {"q": "nothing-like-this"})
    assert shown_ids(response) == []
    assert b"No requests match" in response.content


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"status": "exploded"}, "not a request status"),
        ({"endpoint": "/v1/../etc"}, "not an endpoint"),
        ({"after": "'; DROP TABLE--"}, "page link is not valid"),
        ({"before": "req_123"}, "page link is not valid"),
        ({"after": request_id(3), "before": request_id(1)}, "not both"),
        ({"q": "x" * 300}, "at most 255"),
    ],
)
def test_a_bad_filter_or_page_shows_the_page_with_a_message(client, alice, project, query, problem):
    make_requests(project, 3)
    client.force_login(alice)

    response = client.get(reverse("request-list", args=[project.public_id]), query)

    assert response.status_code == 200
    assert any(problem in message for message in messages_of(response))
    assert shown_ids(response) == [request_id(3), request_id(2), request_id(1)]


def test_keyset_pagination_walks_older_and_back_newer(client, alice, project):
    make_requests(project, 120)
    client.force_login(alice)
    url = reverse("request-list", args=[project.public_id])

    first = client.get(url)
    assert shown_ids(first) == [request_id(n) for n in range(120, 70, -1)]
    assert first.context["page"].newer is None
    assert first.context["page"].older == request_id(71)
    assert f"after={request_id(71)}".encode() in first.content

    second = client.get(url, {"after": request_id(71)})
    assert shown_ids(second) == [request_id(n) for n in range(70, 20, -1)]
    assert second.context["page"].newer == request_id(70)

    last = client.get(url, {"after": request_id(21)})
    assert shown_ids(last) == [request_id(n) for n in range(20, 0, -1)]
    assert last.context["page"].older is None

    back = client.get(url, {"before": request_id(70)})
    assert shown_ids(back) == shown_ids(first)
    assert back.context["page"].newer is None


def test_pagination_keeps_the_filters(client, alice, project):
    make_requests(project, 60, status="failed")
    make_requests_succeeded = [
        RequestFactory(project=project, public_id=request_id(1000 + n), status="succeeded")
        for n in range(5)
    ]
    client.force_login(alice)
    url = reverse("request-list", args=[project.public_id])

    first = client.get(url, {"status": "failed"})
    assert len(shown_ids(first)) == 50
    assert b"status=failed&amp;after=" in first.content
    second = client.get(url, {"status": "failed", "after": first.context["page"].older})
    assert shown_ids(second) == [request_id(n) for n in range(10, 0, -1)]
    assert not set(shown_ids(second)) & {r.public_id for r in make_requests_succeeded}


def test_empty_project_says_what_to_do_next(client, alice, project):
    client.force_login(alice)

    response = client.get(reverse("request-list", args=[project.public_id]))

    assert b"No requests yet" in response.content
    assert b"add the provider key" in response.content


def test_requests_in_the_sidebar_opens_the_first_projects_list(client, alice, project):
    client.force_login(alice)

    response = client.get(reverse("requests-home"))

    assert response["Location"] == reverse("request-list", args=[project.public_id])


# ----- detail ------------------------------------------------------------------------


def test_detail_shows_the_attempt_timeline_usage_and_response(client, alice, project):
    now = timezone.now()
    record = RequestFactory(
        project=project,
        status="succeeded",
        attempt_count=2,
        finished_at=now,
        usage={"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
        response_status_code=200,
        response_body=encryption.encrypt(json.dumps({"id": "chatcmpl-1", "ok": True}).encode()),
        response_expires_at=now + timedelta(hours=24),
    )
    AttemptFactory(
        request=record,
        number=1,
        outcome="retryable_error",
        status_code=503,
        error_code="overloaded",
        latency_ms=120,
        retry_after_ms=2000,
        started_at=now - timedelta(seconds=5),
        finished_at=now - timedelta(seconds=4.88),
    )
    AttemptFactory(
        request=record,
        number=2,
        outcome="success",
        status_code=200,
        latency_ms=812,
        started_at=now - timedelta(seconds=2.88),
        finished_at=now,
    )
    client.force_login(alice)

    response = client.get(reverse("request-detail", args=[record.public_id]))
    page = response.content.decode()

    assert "Attempt 1" in page and "Attempt 2" in page
    assert "HTTP 503" in page and "overloaded" in page
    assert "waited 2.0 s before this attempt (the upstream asked for 2.0 s)" in page
    assert "812 ms" in page
    assert "42 total" in page
    assert "&quot;chatcmpl-1&quot;" in page  # pretty-printed response body
    assert "Deleted when the request finished" in page
    assert 'title="' in page and " UTC" in page  # absolute time on hover


def test_detail_shows_the_chain_of_upstreams(client, alice, project):
    now = timezone.now()
    record = RequestFactory(project=project, status="succeeded", attempt_count=2, finished_at=now)
    AttemptFactory(
        request=record,
        number=1,
        upstream="primary",
        outcome="connection_error",
        status_code=None,
        started_at=now - timedelta(seconds=1),
        finished_at=now - timedelta(seconds=0.9),
    )
    AttemptFactory(
        request=record, number=2, upstream="fallback-1", started_at=now - timedelta(seconds=0.9)
    )
    client.force_login(alice)

    page = client.get(reverse("request-detail", args=[record.public_id])).content.decode()

    assert ">primary</span>" in page and ">fallback-1</span>" in page
    assert "failed over to <strong>fallback-1</strong>" in page


def test_detail_notes_a_purged_response_and_shows_errors(client, alice, project):
    record = RequestFactory(
        project=project,
        status="expired",
        response_status_code=503,
        response_body=None,
        error={
            "message": "The request's deadline passed.",
            "type": "upstream_error",
            "param": None,
            "code": "deadline_exceeded",
        },
    )
    client.force_login(alice)

    page = client.get(reverse("request-detail", args=[record.public_id])).content.decode()

    assert "No longer kept" in page
    assert "deadline_exceeded" in page
    assert f'href="{reverse("docs-errors")}#deadline_exceeded"' in page


def test_detail_shows_the_request_body_while_it_is_kept(client, alice, project):
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "<b>hi</b>"}]}
    record = RequestFactory(
        project=project,
        status="retrying",
        request_body=encryption.encrypt(json.dumps(body).encode()),
    )
    client.force_login(alice)

    page = client.get(reverse("request-detail", args=[record.public_id])).content.decode()

    assert "&lt;b&gt;hi&lt;/b&gt;" in page  # escaped, never rendered
    assert '"model": "gpt-test"' in page.replace("&quot;", '"')
    assert "Cancel request" in page


def test_a_body_nested_deeper_than_the_parser_goes_is_shown_as_text(client, alice, project):
    deep = b'{"usage": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    record = RequestFactory(
        project=project,
        status="succeeded",
        request_body=encryption.encrypt(deep),
        response_status_code=200,
        response_body=encryption.encrypt(deep),
        response_expires_at=timezone.now() + timedelta(minutes=1),
    )
    client.force_login(alice)

    response = client.get(reverse("request-detail", args=[record.public_id]))

    assert response.status_code == 200
    assert response.content.decode().count("[[[[[[[[[[") >= 2  # both bodies, as text


def test_an_answer_that_cannot_be_written_out_as_json_again_is_shown_as_text(
    client, alice, project
):
    record = RequestFactory(
        project=project,
        status="succeeded",
        response_status_code=200,
        response_body=encryption.encrypt(b'{"logprob": NaN, "content": "half \\ud83d"}'),
        response_expires_at=timezone.now() + timedelta(minutes=1),
    )
    client.force_login(alice)

    response = client.get(reverse("request-detail", args=[record.public_id]))

    assert response.status_code == 200
    assert "half \\ud83d" in response.content.decode()  # the stored text, as it came


def test_bodies_the_encryption_keys_cannot_read_are_said_so(client, alice, project, caplog):
    dropped = Fernet(Fernet.generate_key())  # a key no longer in REQRUN_ENCRYPTION_KEYS
    record = RequestFactory(
        project=project,
        status="running",
        request_body=dropped.encrypt(b'{"prompt": "sealed question"}'),
        response_status_code=200,
        response_body=dropped.encrypt(b'{"answer": "sealed answer"}'),
        response_expires_at=timezone.now() + timedelta(minutes=1),
    )
    client.force_login(alice)

    with caplog.at_level(logging.WARNING):
        response = client.get(reverse("request-detail", args=[record.public_id]))

    assert response.status_code == 200
    page = response.content.decode()
    assert page.count("cannot be read with the current encryption keys") == 2
    assert "sealed" not in page
    unreadable = [r for r in caplog.records if r.getMessage() == "stored value cannot be decrypted"]
    assert [r.request_id for r in unreadable] == [record.public_id] * 2
    assert "gAAAAA" not in caplog.text


def test_an_expired_response_body_is_not_shown(client, alice, project):
    record = RequestFactory(
        project=project,
        status="succeeded",
        response_status_code=200,
        response_body=encryption.encrypt(b'{"secret": "old answer"}'),
        response_expires_at=timezone.now() - timedelta(minutes=1),
    )
    client.force_login(alice)

    page = client.get(reverse("request-detail", args=[record.public_id])).content.decode()

    assert "old answer" not in page
    assert "No longer kept" in page


def test_zero_retention_keeps_an_answer_a_head_request_did_not_show(client, alice, project):
    project.zero_retention = True
    project.save()
    record = RequestFactory(
        project=project,
        status="succeeded",
        response_status_code=200,
        response_body=encryption.encrypt(b'{"answer": "kept until first shown"}'),
        response_expires_at=timezone.now() + timedelta(minutes=1),
    )
    client.force_login(alice)
    url = reverse("request-detail", args=[record.public_id])

    assert client.head(url).status_code == 200  # headers only: nothing shown
    page = client.get(url).content.decode()

    assert "kept until first shown" in page
    record.refresh_from_db()
    assert record.response_body is None  # shown once, then gone


# ----- usage -------------------------------------------------------------------------


def test_usage_counts_requests_and_tokens_per_day_and_project(
    client, alice, alice_account, project
):
    other = ProjectFactory(account=alice_account, name="Batch jobs")
    for tokens in (10, 20, None):
        RequestFactory(
            project=project, status="succeeded", usage={"total_tokens": tokens} if tokens else None
        )
    RequestFactory(project=other, status="failed", usage={"total_tokens": "lots"})
    set_accepted_requests(alice_account, 9_000)
    client.force_login(alice)

    response = client.get(reverse("usage"))
    report = response.context["report"]
    page = response.content.decode()

    today = next(day for day in report.days if day.day == timezone.now().date())
    assert (today.requests, today.tokens) == (4, 30)
    assert report.totals == {"requests": 4, "tokens": 30, "unreported": 1}
    by_project = {row["project__name"]: row for row in report.projects}
    assert by_project["Chatbot"]["requests"] == 3 and by_project["Chatbot"]["tokens"] == 30
    assert by_project["Batch jobs"]["failed"] == 1
    assert "9,000" in page and "10,000" in page  # the free plan's quota
    assert "90 %" in page and "quota-bar-warning" in page
    assert report.period_end.strftime("%B") in page  # the reset date
    assert page.count('<svg class="usage-chart"') == 2
    assert "4 requests" in page  # the bar's hover title


def test_usage_still_counts_requests_whose_records_were_purged(
    client, alice, alice_account, project
):
    other = ProjectFactory(account=alice_account, name="Batch jobs")
    for tokens in (10, 20):
        RequestFactory(project=project, status="succeeded", usage={"total_tokens": tokens})
    RequestFactory(project=other, status="failed")

    purge_expired_data(timezone.now() + timedelta(days=4))  # past Free's 3 days of records
    purge_expired_data(timezone.now() + timedelta(days=4))  # a second run adds nothing
    assert not Request.objects.filter(account=alice_account).exists()
    RequestFactory(project=project, status="succeeded", usage={"total_tokens": 5})  # still kept
    client.force_login(alice)

    report = client.get(reverse("usage")).context["report"]

    today = next(day for day in report.days if day.day == timezone.now().date())
    assert (today.requests, today.tokens) == (4, 35)
    by_project = {row["project__name"]: row for row in report.projects}
    assert [name for name in by_project] == ["Chatbot", "Batch jobs"]
    assert (by_project["Chatbot"]["requests"], by_project["Chatbot"]["succeeded"]) == (3, 3)
    assert (by_project["Batch jobs"]["requests"], by_project["Batch jobs"]["failed"]) == (1, 1)


@pytest.mark.parametrize(
    ("used", "percent", "bar"),
    [(7_999, 79, "quota-bar"), (8_000, 80, "quota-bar quota-bar-warning"), (9_999, 99, None)],
)
def test_the_quota_bar_agrees_with_the_billing_page_and_the_usage_emails(
    client, alice, alice_account, project, used, percent, bar
):
    # Rounded down, as the billing page and the 80 % email count: 9,999 of 10,000 is not
    # "100 %" while requests are still accepted, nor 7,999 "80 %" before the 80 % email.
    RequestFactory(project=project)
    set_accepted_requests(alice_account, used)
    client.force_login(alice)

    usage_page = client.get(reverse("usage")).content.decode()
    billing_page = client.get("/app/billing/").content.decode()

    assert f"<span>{percent} %</span>" in usage_page
    assert f"<span>{percent}%</span>" in billing_page
    assert "quota-bar-danger" not in usage_page + billing_page
    if bar:
        assert f'class="{bar}"' in usage_page and f'class="{bar}"' in billing_page


def test_usage_says_how_many_requests_had_no_usage_reported(client, alice, project):
    # A stream without `stream_options.include_usage`, or an upstream that sends none: its
    # tokens are unknown, not zero, and the token totals say they leave them out. Failed
    # calls are not counted as unknown: an upstream's refusal uses no tokens.
    RequestFactory(project=project, status="succeeded", usage={"total_tokens": 7})
    RequestFactory(project=project, status="succeeded", usage=None)
    RequestFactory(project=project, status="failed", usage=None)
    purge_expired_data(timezone.now() + timedelta(days=4))  # kept as the day's totals
    RequestFactory(project=project, status="succeeded", usage=None, stream=True)
    client.force_login(alice)

    response = client.get(reverse("usage"))

    assert response.context["report"].totals["tokens"] == 7
    page = " ".join(response.content.decode().split())
    assert "2 succeeded requests had no usage reported" in page


def test_usage_without_requests_says_what_to_do(client, alice, project):
    client.force_login(alice)

    page = client.get(reverse("usage")).content.decode()

    assert "No requests this period yet" in page
