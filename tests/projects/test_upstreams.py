"""A project's upstreams as an ordered list: services within the plan's cap, the dashboard
forms, the command line, the data migration from the single upstream, and the body the
primary is sent (model map)."""

import html
import json
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from core import encryption
from projects import errors, upstreams
from projects.limits import LimitReached, limits_for, set_plan
from projects.models import Project, Upstream
from projects.selectors import primary_upstream
from tests.factories import AccountFactory
from tests.projects.conftest import PROVIDER_KEY, messages_of

pytestmark = pytest.mark.django_db

FALLBACK_KEY = "sk-fallback-provider-key-9b1e"
# urlsplit() or its .port raise ValueError on each of these.
MALFORMED_URLS = (
    "https://[::1/v1",
    "https://llm.example.net:99999/v1",
    "https://llm.example.net:abc/v1",
    "https://\u2100.com/v1",
)


# A base URL pasted with the endpoint on it, and what the refusal tells the user to enter.
ENDPOINT_PASTED = "https://llm.example.net/v1/chat/completions"
ENDPOINT_REFUSAL = (
    "Enter the API's base URL without the endpoint: https://llm.example.net/v1 "
    "(ReqRun adds /chat/completions itself)."
)


def names_in_order(project):
    return list(project.upstreams.order_by("position").values_list("name", "position"))


@pytest.fixture
def two_upstreams(alice_project, on_pro):
    fallback = upstreams.add_upstream(
        project=alice_project,
        base_url="https://llm.example.net/v1",
        provider_key=FALLBACK_KEY,
        model_map={"gpt-4o-mini": "their-mini"},
    )
    return alice_project.upstreams.get(name="primary"), fallback


def test_plans_cap_upstreams_per_project(alice_account):
    caps = {}
    for code in ("free", "pro", "team", "enterprise"):
        set_plan(account=alice_account, plan_code=code)
        caps[code] = limits_for(alice_account).upstreams_per_project
    assert caps == {"free": 1, "pro": 2, "team": 5, "enterprise": 10}


def test_added_upstreams_are_named_and_ordered_within_the_cap(alice_project, alice, on_pro):
    set_plan(account=alice_project.account, plan_code="free")
    with pytest.raises(LimitReached, match="The Free plan allows 1 upstream per project"):
        upstreams.add_upstream(project=alice_project, base_url="https://llm.example.net/v1")
    set_plan(account=alice_project.account, plan_code="pro")
    fallback = upstreams.add_upstream(
        project=alice_project, base_url="https://llm.example.net/v1/", actor=alice
    )
    assert (fallback.name, fallback.position, fallback.base_url) == (
        "fallback-1",
        1,
        "https://llm.example.net/v1",
    )
    assert not fallback.has_provider_key
    with pytest.raises(LimitReached, match="The Pro plan allows 2 upstreams per project"):
        upstreams.add_upstream(project=alice_project, base_url="https://other.example.net/v1")
    assert names_in_order(alice_project) == [("primary", 0), ("fallback-1", 1)]
    assert AuditEvent.objects.filter(action="upstream_added", actor=alice).count() == 1


@pytest.mark.parametrize(
    ("name", "error"),
    [("primary", "already named"), ("Not A Slug!", "lowercase letters, digits and dashes")],
)
def test_upstream_names_are_unique_slugs(alice_project, on_pro, name, error):
    with pytest.raises(errors.NameNotAvailable, match=error):
        upstreams.add_upstream(project=alice_project, name=name, base_url="https://x.example/v1")
    assert alice_project.upstreams.count() == 1


def test_a_host_change_clears_only_that_upstreams_key(two_upstreams, alice):
    primary, fallback = two_upstreams
    upstreams.update_upstream(
        upstream=fallback, base_url="https://elsewhere.example.org/v1", actor=alice
    )
    fallback.refresh_from_db()
    primary.refresh_from_db()
    assert upstreams.provider_key_of(fallback) is None
    assert upstreams.provider_key_of(primary) == PROVIDER_KEY
    assert fallback.model_map == {"gpt-4o-mini": "their-mini"}  # None keeps the map
    event = AuditEvent.objects.get(action="upstream_host_changed")
    assert "fallback-1" in event.target and "provider key cleared" in event.target


def open_breaker(upstream: Upstream) -> None:
    now = timezone.now()
    Upstream.objects.filter(pk=upstream.pk).update(
        breaker_opened_at=now, breaker_open_until=now + timedelta(minutes=5), breaker_failures=0
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda fallback, alice: upstreams.set_upstream_key(
            upstream=fallback, provider_key="sk-a-new-provider-key", actor=alice
        ),
        lambda fallback, alice: upstreams.update_upstream(
            upstream=fallback, base_url="https://llm.example.net/openai/v1", actor=alice
        ),
    ],
    ids=["a new provider key", "a new base URL"],
)
def test_a_new_key_or_base_url_closes_the_upstreams_open_breaker(two_upstreams, alice, change):
    # The breaker judged the old key at the old URL: the new one is not skipped for them.
    primary, fallback = two_upstreams
    open_breaker(primary)
    open_breaker(fallback)

    change(fallback, alice)

    fallback.refresh_from_db()
    assert (fallback.breaker_open_until, fallback.breaker_opened_at) == (None, None)
    assert Upstream.objects.get(pk=primary.pk).breaker_open_until is not None  # only its own
    event = AuditEvent.objects.get(action="upstream_breaker_closed")
    assert event.actor == alice and "fallback-1" in event.target


def test_a_model_map_change_leaves_the_breaker_open(two_upstreams, alice):
    _, fallback = two_upstreams
    open_breaker(fallback)

    upstreams.update_upstream(
        upstream=fallback, base_url=fallback.base_url, model_map={"a": "b"}, actor=alice
    )

    assert Upstream.objects.get(pk=fallback.pk).breaker_open_until is not None
    assert not AuditEvent.objects.filter(action="upstream_breaker_closed").exists()


def test_the_primary_is_the_first_enabled_upstream(two_upstreams, alice):
    primary, fallback = two_upstreams
    project = primary.project
    assert primary_upstream(project).name == "primary"
    upstreams.move_upstream(upstream=fallback, offset=-1, actor=alice)
    assert names_in_order(project) == [("fallback-1", 0), ("primary", 1)]
    assert primary_upstream(project).name == "fallback-1"
    upstreams.set_upstream_enabled(upstream=fallback, enabled=False, actor=alice)
    assert primary_upstream(project).name == "primary"
    assert upstreams.provider_key_of(project) == PROVIDER_KEY


def test_the_last_enabled_upstream_can_be_neither_disabled_nor_removed(two_upstreams):
    primary, fallback = two_upstreams
    upstreams.set_upstream_enabled(upstream=fallback, enabled=False)
    with pytest.raises(errors.UpstreamRefused, match="only enabled upstream"):
        upstreams.set_upstream_enabled(upstream=primary, enabled=False)
    with pytest.raises(errors.UpstreamRefused, match="only enabled upstream"):
        upstreams.remove_upstream(upstream=primary)
    upstreams.remove_upstream(upstream=fallback)
    assert names_in_order(primary.project) == [("primary", 0)]
    with pytest.raises(errors.UpstreamRefused):
        upstreams.remove_upstream(upstream=primary)
    assert primary.project.upstreams.count() == 1


def test_removing_the_primary_promotes_the_next(two_upstreams):
    primary, fallback = two_upstreams
    upstreams.remove_upstream(upstream=primary)
    assert names_in_order(fallback.project) == [("fallback-1", 0)]
    assert primary_upstream(fallback.project).name == "fallback-1"


def test_reorder_must_name_every_upstream_once(two_upstreams):
    project = two_upstreams[0].project
    with pytest.raises(errors.UpstreamRefused):
        upstreams.reorder_upstreams(project=project, names=["primary"])
    upstreams.reorder_upstreams(project=project, names=["fallback-1", "primary"])
    assert names_in_order(project) == [("fallback-1", 0), ("primary", 1)]


def test_the_model_map_renames_only_the_top_level_model(two_upstreams):
    primary, fallback = two_upstreams
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "gpt-4o-mini"}]}'
    mapped = json.loads(fallback.mapped_body(body))
    assert mapped == {
        "model": "their-mini",
        "messages": [{"role": "user", "content": "gpt-4o-mini"}],
    }
    unmapped = b'{"model":  "gpt-4o",\n "stream": false}'
    assert fallback.mapped_body(unmapped) == unmapped  # byte for byte
    assert primary.mapped_body(body) == body  # no map at all
    assert fallback.mapped_body(b'{"model": ["gpt-4o-mini"]}') == b'{"model": ["gpt-4o-mini"]}'


@pytest.mark.parametrize(
    "model_map", [{"gpt-4o": ""}, {" ": "x"}, {"a b": "c"}, {"gpt-4o": 3}, ["gpt-4o"]]
)
def test_a_bad_model_map_is_refused(two_upstreams, model_map):
    fallback = two_upstreams[1]
    with pytest.raises(errors.InvalidModelMap):
        upstreams.update_upstream(
            upstream=fallback, base_url=fallback.base_url, model_map=model_map
        )
    fallback.refresh_from_db()
    assert fallback.model_map == {"gpt-4o-mini": "their-mini"}


def test_rotation_covers_every_upstreams_key(two_upstreams, settings):
    from cryptography.fernet import Fernet

    old = settings.REQRUN_ENCRYPTION_KEYS[0]
    settings.REQRUN_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old]
    assert upstreams.rotate_provider_keys() == 2
    settings.REQRUN_ENCRYPTION_KEYS = settings.REQRUN_ENCRYPTION_KEYS[:1]
    primary, fallback = (Upstream.objects.get(pk=upstream.pk) for upstream in two_upstreams)
    assert upstreams.provider_key_of(primary) == PROVIDER_KEY
    assert upstreams.provider_key_of(fallback) == FALLBACK_KEY


# The dashboard


def project_url(project, name="project-detail"):
    return reverse(name, args=[project.public_id])


def upstream_url(project, name, upstream="primary"):
    return reverse(name, args=[project.public_id, upstream])


def test_the_project_page_lists_upstreams_and_adds_one(alice_client, alice_project, on_pro):
    response = alice_client.post(
        project_url(alice_project, "upstream-add"),
        {
            "name": "",
            "base_url": "https://llm.example.net/v1",
            "provider_key": FALLBACK_KEY,
            "model_map": "gpt-4o-mini = their-mini\n\ngpt-4o=their-large",
        },
        follow=True,
    )
    assert "Upstream “fallback-1” added." in messages_of(response)
    fallback = alice_project.upstreams.get(name="fallback-1")
    assert fallback.model_map == {"gpt-4o-mini": "their-mini", "gpt-4o": "their-large"}
    page = response.content.decode()
    assert "https://llm.example.net/v1" in page and "…9b1e" in page
    assert "gpt-4o-mini → their-mini" in page
    assert FALLBACK_KEY not in page


def test_at_the_cap_the_add_form_says_so_and_adds_nothing(alice_client, alice_project):
    response = alice_client.post(
        project_url(alice_project, "upstream-add"),
        {"base_url": "https://llm.example.net/v1"},
    )
    assert response.status_code == 200
    assert "The Free plan allows 1 upstream per project." in response.content.decode()
    assert alice_project.upstreams.count() == 1


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"model_map": "gpt-4o"}, "write each pair as source=destination"),
        ({"model_map": "gpt-4o=\n"}, "write each pair as source=destination"),
        ({"model_map": "a=b\na=c"}, "is mapped twice"),
        ({"name": "primary"}, "already named"),
        ({"base_url": "ftp://x.example/v1"}, "Enter a full base URL"),
        ({"provider_key": "short"}, "does not look like a provider API key"),
        # An HTTP header carries neither: every call would fail once the key was saved.
        ({"provider_key": "sk-abcdefghij\u00e9-klmnopqrst"}, "letters, digits and punctuation"),
        ({"provider_key": "sk-abcdefghij\x01-klmnopqrst"}, "letters, digits and punctuation"),
        ({"model_map": "gpt-4o=their\x00large"}, "no spaces or control characters"),
        ({"model_map": "gpt\x00=theirs"}, "no spaces or control characters"),
        *(({"base_url": url}, "Enter a full base URL") for url in MALFORMED_URLS),
    ],
)
def test_bad_upstream_input_is_a_form_error_and_saves_nothing(
    alice_client, alice_project, on_pro, data, error
):
    response = alice_client.post(
        project_url(alice_project, "upstream-add"),
        {"base_url": "https://llm.example.net/v1", **data},
    )
    assert response.status_code == 200
    assert error in response.content.decode()
    assert alice_project.upstreams.count() == 1


@pytest.mark.parametrize(
    ("url", "suggested", "endpoint"),
    [
        (ENDPOINT_PASTED, "https://llm.example.net/v1", "/chat/completions"),
        (ENDPOINT_PASTED + "/", "https://llm.example.net/v1", "/chat/completions"),
        (
            "https://llm.example.net/openai/v1/completions",
            "https://llm.example.net/openai/v1",
            "/completions",
        ),
        ("https://llm.example.net/v1/embeddings", "https://llm.example.net/v1", "/embeddings"),
    ],
)
def test_a_base_url_holding_the_endpoint_path_is_refused_on_add(
    alice_client, alice_project, on_pro, url, suggested, endpoint
):
    response = alice_client.post(project_url(alice_project, "upstream-add"), {"base_url": url})

    assert response.status_code == 200
    assert (
        html.escape(
            f"Enter the API's base URL without the endpoint: {suggested} "
            f"(ReqRun adds {endpoint} itself)."
        )
        in response.content.decode()
    )
    assert alice_project.upstreams.count() == 1


def test_a_base_url_holding_the_endpoint_path_is_refused_on_edit(alice_client, two_upstreams):
    project = two_upstreams[0].project

    response = alice_client.post(
        upstream_url(project, "upstream-edit", "fallback-1"), {"base_url": ENDPOINT_PASTED + "/"}
    )

    assert response.status_code == 200
    assert html.escape(ENDPOINT_REFUSAL) in response.content.decode()
    assert project.upstreams.get(name="fallback-1").base_url == "https://llm.example.net/v1"


def test_a_base_url_ending_in_a_path_segment_named_models_is_kept(alice_project, on_pro):
    # Azure AI's model inference endpoint is such a base URL: only the endpoints a request
    # is sent to are refused at the end of a base URL, not the /v1/models pass-through.
    upstream = upstreams.add_upstream(
        project=alice_project, base_url="https://llm.example.net/models"
    )
    assert upstream.base_url == "https://llm.example.net/models"


def test_edit_sets_the_model_map_as_lines(alice_client, two_upstreams):
    project = two_upstreams[0].project
    page = alice_client.get(upstream_url(project, "upstream-edit", "fallback-1")).content.decode()
    assert "gpt-4o-mini=their-mini" in page and FALLBACK_KEY not in page
    response = alice_client.post(
        upstream_url(project, "upstream-edit", "fallback-1"),
        {"base_url": "https://llm.example.net/v1", "model_map": "gpt-4o=their-large"},
        follow=True,
    )
    assert "Upstream “fallback-1” saved; its provider key ends in …9b1e." in messages_of(response)
    assert project.upstreams.get(name="fallback-1").model_map == {"gpt-4o": "their-large"}


@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_url_on_edit_is_a_form_error_and_changes_nothing(
    alice_client, two_upstreams, url
):
    project = two_upstreams[0].project

    response = alice_client.post(
        upstream_url(project, "upstream-edit", "fallback-1"), {"base_url": url}
    )

    assert response.status_code == 200
    assert "Enter a full base URL" in response.content.decode()
    assert project.upstreams.get(name="fallback-1").base_url == "https://llm.example.net/v1"


def test_move_disable_enable_and_remove_from_the_page(alice_client, two_upstreams):
    project = two_upstreams[0].project
    alice_client.post(upstream_url(project, "upstream-move", "fallback-1"), {"direction": "up"})
    assert names_in_order(project) == [("fallback-1", 0), ("primary", 1)]
    alice_client.post(upstream_url(project, "upstream-enabled", "fallback-1"), {})
    assert not project.upstreams.get(name="fallback-1").enabled
    response = alice_client.post(
        upstream_url(project, "upstream-enabled", "primary"), {}, follow=True
    )
    assert any("only enabled upstream" in message for message in messages_of(response))
    assert project.upstreams.get(name="primary").enabled
    alice_client.post(upstream_url(project, "upstream-enabled", "fallback-1"), {"enabled": "on"})
    assert project.upstreams.get(name="fallback-1").enabled
    response = alice_client.post(upstream_url(project, "upstream-remove", "primary"), follow=True)
    assert "Upstream “primary” and its provider key removed." in messages_of(response)
    assert names_in_order(project) == [("fallback-1", 0)]


def test_a_member_sees_upstreams_read_only(bob_client, two_upstreams):
    project = two_upstreams[0].project
    page = bob_client.get(project_url(project)).content.decode()
    assert "fallback-1" in page and "https://llm.example.net/v1" in page and "…9b1e" in page
    assert "Add upstream" not in page and 'name="direction"' not in page
    assert bob_client.get(upstream_url(project, "upstream-edit")).status_code == 403


def test_another_tenant_gets_404_for_a_second_upstream(charlie_client, two_upstreams):
    project = two_upstreams[0].project
    before = list(Upstream.objects.values().order_by("pk"))
    for name, data in [
        ("upstream-edit", {"base_url": "https://evil.example/v1"}),
        ("upstream-move", {"direction": "up"}),
        ("upstream-enabled", {}),
        ("upstream-remove", {}),
        ("provider-key-remove", {}),
    ]:
        assert (
            charlie_client.post(upstream_url(project, name, "fallback-1"), data).status_code == 404
        )
    assert (
        charlie_client.get(upstream_url(project, "upstream-edit", "fallback-1")).status_code == 404
    )
    assert list(Upstream.objects.values().order_by("pk")) == before


# The command line


def bootstrap(*args):
    out = StringIO()
    call_command("bootstrap_project", "--email", "eve@example.com", *args, stdout=out)
    return json.loads(out.getvalue())


def test_bootstrap_makes_a_project_with_fallbacks_in_one_command():
    result = bootstrap(
        "--plan",
        "team",
        *("--upstream-url", "http://127.0.0.1:9001/v1", "--upstream-key", "sk-first-00001"),
        *("--upstream-url", "http://127.0.0.1:9002/v1", "--upstream-key", "sk-second-0002"),
        *("--model-map", "fallback-1=gpt-4o-mini:their:mini"),
    )
    assert set(result) == {"account", "project", "api_key"}
    project = Project.objects.get(public_id=result["project"])
    upstreams = list(project.upstreams.order_by("position"))
    assert [(u.name, u.base_url, u.provider_key_last4) for u in upstreams] == [
        ("primary", "http://127.0.0.1:9001/v1", "0001"),
        ("fallback-1", "http://127.0.0.1:9002/v1", "0002"),
    ]
    assert upstreams[1].model_map == {"gpt-4o-mini": "their:mini"}

    again = bootstrap(  # named, reordered, one dropped: the list is made exactly this
        *("--upstream-url", "http://127.0.0.1:9003/v1", "--upstream-key", "sk-third-00003"),
        *("--upstream-name", "backup"),
    )
    assert again["project"] == result["project"]
    assert names_in_order(project) == [("backup", 0)]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--upstream-url", "http://127.0.0.1:9001/v1", "--upstream-key", "sk-first-00001"]
            + ["--upstream-url", "http://127.0.0.1:9002/v1"],
            "Give each --upstream-url its --upstream-key",
        ),
        (
            ["--upstream-url", "http://127.0.0.1:9001/v1", "--upstream-key", "sk-first-00001"]
            + ["--upstream-name", "a", "--upstream-name", "b"],
            "one --upstream-name per upstream",
        ),
        (
            ["--upstream-url", "http://127.0.0.1:9001/v1", "--upstream-key", "sk-first-00001"]
            + ["--model-map", "nobody=a:b"],
            "no upstream named 'nobody'",
        ),
        (
            ["--upstream-url", "http://127.0.0.1:9001/v1", "--upstream-key", "sk-first-00001"]
            + ["--model-map", "primary=ab"],
            "NAME=SRC:DST",
        ),
        (
            ["--upstream-url", "http://127.0.0.1:9001/v1", "--upstream-key", "sk-first-00001"]
            + ["--upstream-url", "http://127.0.0.1:9002/v1", "--upstream-key", "sk-second-0002"],
            "1 upstream per project.*--plan",
        ),
        (
            ["--upstream-url", "http://127.0.0.1:9001/v1/chat/completions/"]
            + ["--upstream-key", "sk-first-00001"],
            re.escape(
                "Enter the API's base URL without the endpoint: http://127.0.0.1:9001/v1 "
                "(ReqRun adds /chat/completions itself)."
            ),
        ),
    ],
)
def test_bootstrap_bad_upstream_flags_are_clear_errors_and_create_nothing(args, error):
    with pytest.raises(CommandError, match=error):
        call_command("bootstrap_project", "--email", "eve@example.com", *args, stdout=StringIO())
    assert not Project.objects.exists()


# The migration from one upstream per project


@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_each_projects_upstream_its_primary():
    account = AccountFactory()
    before = ("projects", "0003_plan_upstreams_per_project")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    try:
        old_apps = executor.loader.project_state([before]).apps
        OldProject = old_apps.get_model("projects", "Project")
        with_key = OldProject.objects.create(
            account_id=account.pk,
            name="Old",
            upstream_base_url="https://llm.example.net/v1",
            provider_key_encrypted=encryption.encrypt(b"sk-from-before-1234"),
            provider_key_last4="1234",
        )
        without_key = OldProject.objects.create(account_id=account.pk, name="Keyless")
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    (primary,) = Upstream.objects.filter(project_id=with_key.pk)
    assert (primary.name, primary.position, primary.base_url, primary.enabled) == (
        "primary",
        0,
        "https://llm.example.net/v1",
        True,
    )
    assert upstreams.provider_key_of(primary) == "sk-from-before-1234"
    assert primary.provider_key_last4 == "1234" and primary.model_map == {}
    (keyless,) = Upstream.objects.filter(project_id=without_key.pk)
    assert keyless.base_url == "https://api.openai.com/v1" and not keyless.has_provider_key
