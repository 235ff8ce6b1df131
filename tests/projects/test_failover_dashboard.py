"""The project page's failover policy (owners and admins edit it, members read it) and its
per-upstream health: breaker state, and the last hour's attempts, success rate and p50."""

import re
from datetime import UTC, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from projects import errors, services, upstreams
from projects.models import FailoverOn, Project, Upstream
from requests_app.dashboard.selectors import upstream_health
from tests.factories import AttemptFactory, ProjectFactory, RequestFactory
from tests.projects.conftest import messages_of

pytestmark = pytest.mark.django_db

FALLBACK_KEY = "sk-fallback-provider-key-9b1e"
POLICY = {"failover_on": ["connection_error", "timeout"], "tries_per_upstream": "3"}


@pytest.fixture
def two_upstreams(alice_project, on_pro):
    fallback = upstreams.add_upstream(
        project=alice_project, base_url="https://llm.example.net/v1", provider_key=FALLBACK_KEY
    )
    return alice_project.upstreams.get(name="primary"), fallback


def page_url(project, name="project-detail"):
    return reverse(name, args=[project.public_id])


def policy_of(project):
    project.refresh_from_db()
    return (
        project.failover_on,
        project.failover_tries_per_upstream,
        project.failover_return_to_primary,
        project.failover_current,
    )


def row_text(page: str, upstream: str) -> str:
    """The visible text of one upstream's row in the upstreams table."""
    row = re.search(rf'<tr data-upstream="{upstream}">(.*?)</tr>', page, re.S)
    assert row, f"no row for {upstream}"
    return " ".join(re.sub(r"<[^>]+>", " ", row.group(1)).split())


# ----- the policy form ---------------------------------------------------------------


def test_the_policy_form_shows_the_defaults(alice_client, two_upstreams):
    page = alice_client.get(page_url(two_upstreams[0].project)).content.decode()
    form = page[page.index('action="' + page_url(two_upstreams[0].project, "project-failover")) :]
    form = form[: form.index("</form>")]
    for value, label in FailoverOn.choices:
        # Answers no client can read move a request only when the project asks for it.
        checked = value != "unreadable_answer"
        assert bool(re.search(rf'value="{value}"[^>]*checked', form)) == checked, value
        assert label in form
    assert "unreadable_answer" in form
    assert 'name="tries_per_upstream" value="1"' in form
    assert re.search(r'name="return_to_primary"[^>]*checked', form)
    assert "never moves a request" in form


def test_the_policy_form_saves_and_audits(alice_client, alice, two_upstreams):
    project = two_upstreams[0].project
    response = alice_client.post(page_url(project, "project-failover"), POLICY, follow=True)
    assert "Failover policy saved." in messages_of(response)
    assert policy_of(project) == (["connection_error", "timeout"], 3, False, "")
    event = AuditEvent.objects.get(action="failover_policy_changed")
    assert event.actor == alice and event.account == project.account
    assert project.public_id in event.target and "connection_error, timeout" in event.target
    page = response.content.decode()
    assert re.search(r'value="timeout"[^>]*checked', page)
    assert not re.search(r'value="server_error"[^>]*checked', page)


def test_answers_no_client_can_read_can_be_ticked(alice_client, two_upstreams):
    project = two_upstreams[0].project
    data = {**POLICY, "failover_on": ["unreadable_answer", "timeout"]}
    response = alice_client.post(page_url(project, "project-failover"), data, follow=True)
    assert "Failover policy saved." in messages_of(response)
    assert policy_of(project)[0] == ["timeout", "unreadable_answer"]


def test_nothing_ticked_means_requests_never_move(alice_client, two_upstreams):
    project = two_upstreams[0].project
    data = {"tries_per_upstream": "1", "return_to_primary": "on"}
    alice_client.post(page_url(project, "project-failover"), data)
    assert policy_of(project) == ([], 1, True, "")


def test_return_to_primary_forgets_where_requests_started(alice_client, two_upstreams):
    project = two_upstreams[0].project
    Project.objects.filter(pk=project.pk).update(
        failover_return_to_primary=False, failover_current="fallback-1"
    )
    page = alice_client.get(page_url(project)).content.decode()
    assert "Requests now start on “fallback-1”, where the last one succeeded." in page
    project.upstreams.filter(name="fallback-1").update(enabled=False)  # the primary again
    assert "Requests now start on" not in alice_client.get(page_url(project)).content.decode()
    project.upstreams.filter(name="fallback-1").update(enabled=True)

    # Saved with return-to-primary still off: where requests start is kept.
    alice_client.post(page_url(project, "project-failover"), POLICY)
    assert policy_of(project)[2:] == (False, "fallback-1")

    alice_client.post(page_url(project, "project-failover"), {**POLICY, "return_to_primary": "on"})
    assert policy_of(project)[2:] == (True, "")
    assert "Requests now start on" not in alice_client.get(page_url(project)).content.decode()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"tries_per_upstream": "0"}, "greater than or equal to 1"),
        ({"tries_per_upstream": "11"}, "less than or equal to 10"),
        ({"tries_per_upstream": "two"}, "Enter a whole number."),
        ({"tries_per_upstream": ""}, "This field is required."),
        ({"failover_on": ["timeout", "sometimes"]}, "sometimes is not one of the available"),
    ],
)
def test_bad_policy_input_is_a_form_error_and_saves_nothing(
    alice_client, two_upstreams, changes, error
):
    project = two_upstreams[0].project
    before = Project.objects.values().get(pk=project.pk)
    response = alice_client.post(page_url(project, "project-failover"), {**POLICY, **changes})
    assert response.status_code == 200
    assert error in response.content.decode()
    assert Project.objects.values().get(pk=project.pk) == before
    assert not AuditEvent.objects.filter(action="failover_policy_changed").exists()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"failover_on": ["sometimes"]}, "Unknown failover outcome: sometimes."),
        ({"tries_per_upstream": 0}, "from 1 to 10"),
        ({"tries_per_upstream": 11}, "from 1 to 10"),
    ],
)
def test_the_service_refuses_what_the_engine_cannot_follow(alice_project, changes, error):
    before = Project.objects.values().get(pk=alice_project.pk)
    arguments = {"failover_on": [], "tries_per_upstream": 2, "return_to_primary": True}
    with pytest.raises(errors.InvalidFailoverPolicy, match=error):
        services.update_failover_policy(project=alice_project, **{**arguments, **changes})
    assert Project.objects.values().get(pk=alice_project.pk) == before


def test_a_member_sees_the_policy_read_only_and_cannot_change_it(bob_client, two_upstreams):
    project = two_upstreams[0].project
    page = bob_client.get(page_url(project)).content.decode()
    assert "Tries per upstream" in page and "Return to the primary on the next request" in page
    assert "429 answers, including insufficient_quota" in page
    assert page_url(project, "project-failover") not in page
    assert 'name="tries_per_upstream"' not in page
    # Members see each upstream's health.
    assert "Closed No attempts in the last hour" in row_text(page, "fallback-1")
    before = Project.objects.values().get(pk=project.pk)
    response = bob_client.post(page_url(project, "project-failover"), POLICY)
    assert response.status_code == 403
    assert Project.objects.values().get(pk=project.pk) == before


def test_another_tenant_gets_404(charlie_client, two_upstreams):
    project = two_upstreams[0].project
    before = Project.objects.values().get(pk=project.pk)
    assert charlie_client.post(page_url(project, "project-failover"), POLICY).status_code == 404
    assert charlie_client.get(page_url(project)).status_code == 404
    assert Project.objects.values().get(pk=project.pk) == before


def test_with_one_upstream_the_page_says_failover_has_nowhere_to_go(alice_client, alice_project):
    page = alice_client.get(page_url(alice_project)).content.decode()
    assert "With a single enabled upstream there is nowhere to move to" in page


# ----- upstream health ---------------------------------------------------------------


def test_the_health_columns_show_each_breaker_state(alice_client, two_upstreams):
    primary, fallback = two_upstreams
    project = primary.project
    page = alice_client.get(page_url(project)).content.decode()
    assert "Closed" in row_text(page, "primary") and "Closed" in row_text(page, "fallback-1")

    open_until = timezone.now().replace(microsecond=0) + timedelta(minutes=10)
    Upstream.objects.filter(pk=primary.pk).update(
        breaker_opened_at=open_until - timedelta(seconds=30), breaker_open_until=open_until
    )
    Upstream.objects.filter(pk=fallback.pk).update(
        breaker_opened_at=timezone.now() - timedelta(minutes=2),
        breaker_open_until=timezone.now() - timedelta(minutes=1),
    )
    page = alice_client.get(page_url(project)).content.decode()
    expected = f"Open until {open_until.astimezone(UTC):%H:%M:%S} UTC"
    assert expected in row_text(page, "primary")
    assert "Half-open — probing" in row_text(page, "fallback-1")
    assert "Closed" not in row_text(page, "primary") + row_text(page, "fallback-1")


def test_the_last_hour_of_attempts_per_upstream(alice_client, alice_account, two_upstreams):
    project = two_upstreams[0].project
    now = timezone.now()
    request = RequestFactory(project=project)
    for number, (outcome, status_code, latency_ms) in enumerate(
        [("success", 200, 100), ("success", 200, 300), ("retryable_error", 503, 1000)], 1
    ):
        AttemptFactory(
            request=request,
            number=number,
            upstream="primary",
            started_at=now - timedelta(minutes=5),
            outcome=outcome,
            status_code=status_code,
            latency_ms=latency_ms,
        )
    AttemptFactory(
        request=RequestFactory(project=project),
        number=1,
        upstream="primary",
        started_at=now - timedelta(minutes=50),
        latency_ms=200,
    )
    # Not counted: started over an hour ago, still in flight, before upstreams had names,
    # or a request of another project sent to an upstream of the same name.
    other = RequestFactory(project=project)
    AttemptFactory(request=other, number=1, upstream="primary", started_at=now - timedelta(hours=2))
    AttemptFactory(request=other, number=2, upstream="primary", outcome="", latency_ms=None)
    AttemptFactory(request=RequestFactory(project=project), number=1, upstream="", latency_ms=9)
    elsewhere = ProjectFactory(account=alice_account, name="Elsewhere")
    AttemptFactory(request=RequestFactory(project=elsewhere), number=1, upstream="primary")

    page = alice_client.get(page_url(project)).content.decode()
    assert "4 attempts · 75% success · p50 250 ms" in row_text(page, "primary")
    assert "No attempts in the last hour" in row_text(page, "fallback-1")


def test_health_is_read_in_two_queries_whatever_the_upstreams(
    two_upstreams, django_assert_num_queries
):
    project = two_upstreams[0].project
    AttemptFactory(request=RequestFactory(project=project), upstream="fallback-1", latency_ms=40)
    with django_assert_num_queries(2):
        health = upstream_health(project)
    assert list(health) == ["primary", "fallback-1"]
    fallback = health["fallback-1"]
    assert (fallback.breaker, fallback.attempts, fallback.success_percent) == ("closed", 1, 100)
    assert fallback.p50_ms == 40
    assert health["primary"].attempts == 0 and health["primary"].success_percent is None
