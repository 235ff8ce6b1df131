"""ReqRun API keys in the dashboard: created named and shown once, listed by prefix,
revoked after confirmation, within the plan's per-project limit."""

import hashlib

import pytest
from django.urls import reverse

from accounts.models import AuditEvent
from projects.limits import limits_for, set_plan
from projects.models import AccountPlan, ApiKey
from projects.selectors import upstreams_of
from projects.services import authenticate_api_key
from projects.upstreams import add_upstream, remove_upstream_key, set_upstream_enabled
from tests.factories import ApiKeyFactory
from tests.projects.conftest import messages_of

pytestmark = pytest.mark.django_db


def keys_url(project):
    return reverse("api-key-list", args=[project.public_id])


def test_new_key_is_shown_once_and_works(alice_client, alice_project):
    response = alice_client.post(keys_url(alice_project), {"name": "production"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    raw_key = response.context["raw_key"]
    page = response.content.decode()
    assert raw_key.startswith("rr_")
    assert f'value="{raw_key}" readonly' in page  # selectable without JavaScript
    assert 'data-copy-target="new-api-key"' in page  # the copy button (static/js/app.js)
    assert "not shown again" in " ".join(messages_of(response))

    api_key = ApiKey.objects.get(project=alice_project)
    assert raw_key not in str(ApiKey.objects.values().get(pk=api_key.pk))
    assert api_key.secret_sha256 == hashlib.sha256(raw_key.split("_")[2].encode()).hexdigest()

    listing = alice_client.get(keys_url(alice_project)).content.decode()
    assert raw_key not in listing
    assert f"rr_{api_key.prefix}_…" in listing and "production" in listing
    assert "never" in listing  # last used

    assert authenticate_api_key(raw_key) == api_key
    assert "never" not in alice_client.get(keys_url(alice_project)).content.decode()


def test_empty_state_says_what_to_do(alice_client, alice_project):
    page = alice_client.get(keys_url(alice_project)).content.decode()
    assert "No API keys yet" in page and "Create one below" in page


def test_free_plan_refuses_a_third_active_key(alice_client, alice_project):
    for name in ("one", "two"):
        alice_client.post(keys_url(alice_project), {"name": name})
    response = alice_client.post(keys_url(alice_project), {"name": "three"})
    page = response.content.decode()
    assert "The Free plan allows 2 active API keys per project." in page
    assert f'href="{reverse("pricing")}"' in page
    assert ApiKey.objects.filter(project=alice_project).count() == 2


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "Give the API key a name."),
        ("Production", "Another API key is already named “Production”."),
    ],
)
def test_bad_key_names_are_refused(alice_client, alice_key, name, error):
    response = alice_client.post(keys_url(alice_key.project), {"name": name})
    assert error in response.content.decode()
    assert ApiKey.objects.count() == 1


def test_revoke_after_confirmation(alice_client, alice_key):
    url = reverse("api-key-revoke", args=[alice_key.project.public_id, alice_key.public_id])
    assert "Revoke “production”" in alice_client.get(url).content.decode()
    assert authenticate_api_key(alice_key.raw_key) is not None

    response = alice_client.post(url, follow=True)
    assert "API key “production” revoked" in " ".join(messages_of(response))
    assert authenticate_api_key(alice_key.raw_key) is None
    assert "Revoked" in response.content.decode()
    # A revoked key frees its slot and its name.
    ApiKeyFactory(project=alice_key.project, name="production")
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1
    actions = list(
        AuditEvent.objects.filter(action__startswith="api_key")
        .order_by("created_at")
        .values_list("action", "actor__email")
    )
    assert actions[:2] == [
        ("api_key_created", "alice@example.com"),
        ("api_key_revoked", "alice@example.com"),
    ]


def test_a_key_brings_its_project_account_and_current_limits_in_one_query(
    alice_key, django_assert_num_queries
):
    AccountPlan.objects.filter(account=alice_key.project.account).update(requests_per_minute=7)
    authenticate_api_key(alice_key.raw_key)  # the first use records last_used_at

    with django_assert_num_queries(1):
        api_key = authenticate_api_key(alice_key.raw_key)
        limits = limits_for(api_key.project.account, preloaded=True)

    assert (limits.plan_code, limits.requests_per_minute) == ("free", 7)


def test_the_keys_query_says_whether_an_enabled_upstream_has_a_provider_key(alice_key):
    project = alice_key.project
    primary = upstreams_of(project).get()
    assert authenticate_api_key(alice_key.raw_key).upstream_has_provider_key is True

    remove_upstream_key(upstream=primary)
    assert authenticate_api_key(alice_key.raw_key).upstream_has_provider_key is False

    # A fallback with a key is enough: the engine skips the primary without one.
    set_plan(account=project.account, plan_code="pro")
    add_upstream(project=project, base_url="https://second.example.com/v1", provider_key="sk-2" * 6)
    assert authenticate_api_key(alice_key.raw_key).upstream_has_provider_key is True

    # A disabled upstream's key does not count.
    set_upstream_enabled(upstream=upstreams_of(project).get(name="fallback-1"), enabled=False)
    assert authenticate_api_key(alice_key.raw_key).upstream_has_provider_key is False
