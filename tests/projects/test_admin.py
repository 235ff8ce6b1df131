"""Operators' admin: every model searchable, plan overrides inline on the account, secrets
never displayed, and suspension with a reason (audited, nothing deleted)."""

from datetime import timedelta
from html import unescape

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.forms import model_to_dict, modelform_factory
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import Account, AuditEvent, Membership
from projects.admin import PLAN_STATE_FIELDS, ProjectAdminForm
from projects.limits import limits_for, set_plan
from projects.members import revoke_invitation
from projects.models import AccountPlan, ApiKey, Invitation, MonthlyUsage, Plan, Project
from requests_app.models import Request
from tests.conftest import delete_in_admin, sign_in_to_admin, written_meanwhile
from tests.factories import AuditEventFactory, MonthlyUsageFactory, RequestFactory, UserFactory
from tests.markup import form_data
from tests.projects.conftest import PROVIDER_KEY

pytestmark = pytest.mark.django_db


@pytest.fixture
def everything(alice_account, alice_project, alice_key, alice_invitation, bob):
    MonthlyUsageFactory(account=alice_account, accepted_requests=12)
    limits_for(alice_account)  # creates the AccountPlan row
    return alice_account


@pytest.mark.parametrize(
    "model",
    [
        "accounts.user",
        "accounts.account",
        "accounts.membership",
        "accounts.auditevent",
        "projects.plan",
        "projects.accountplan",
        "projects.monthlyusage",
        "projects.project",
        "projects.apikey",
        "projects.invitation",
        "usersessions.usersession",
        "mfa.authenticator",
    ],
)
def test_every_model_has_a_searchable_admin(operator_client, everything, model):
    url = reverse(f"admin:{model.replace('.', '_')}_changelist")
    response = operator_client.get(url, {"q": "alice"})
    assert response.status_code == 200
    assert 'id="searchbar"' in response.content.decode()


@pytest.mark.parametrize(
    ("model", "lookup"),
    [
        ("accounts.membership", "role"),
        ("accounts.auditevent", "action"),
        ("projects.invitation", "role__exact"),
        ("billing.webhookevent", "event_type"),
        ("django_celery_beat.periodictask", "task"),
    ],
)
def test_a_nul_in_a_list_filter_is_a_400(operator_client, everything, model, lookup):
    url = reverse(f"admin:{model.replace('.', '_')}_changelist")

    response = operator_client.get(url, {lookup: "a\x00b"})

    assert response.status_code == 400


@pytest.mark.parametrize(
    ("model", "action"),
    [
        ("accounts.account", "suspend_selected"),
        ("accounts.account", "close_selected"),
        ("projects.project", "suspend_selected"),
    ],
)
@pytest.mark.parametrize("selected", ["abc", "a\x00b", "1.5"])
def test_an_action_on_an_id_that_names_no_row_is_a_400_and_changes_nothing(
    operator_client, everything, alice_project, model, action, selected
):
    """The ids come back from the list's checkboxes; a number is the only id a row has."""
    row = everything if model == "accounts.account" else alice_project
    url = reverse(f"admin:{model.replace('.', '_')}_changelist")

    response = operator_client.post(
        url,
        {"action": action, ACTION_CHECKBOX_NAME: [row.pk, selected], "apply": "1", "reason": "x"},
    )

    assert response.status_code == 400
    row.refresh_from_db()
    assert not row.is_suspended
    assert not AuditEvent.objects.filter(
        action__in=["suspended", "account_closed_by_operator"]
    ).exists()


@pytest.mark.parametrize(
    ("model", "action"),
    [
        ("accounts.account", "suspend_selected"),
        ("accounts.account", "close_selected"),
        ("projects.project", "suspend_selected"),
        ("projects.apikey", "revoke_selected"),
    ],
)
def test_staff_who_may_only_view_cannot_run_an_action(
    client, everything, alice_project, alice_key, model, action
):
    """Django offers an action without `permissions` to anyone who can see the list."""
    viewer = UserFactory(email="viewer@reqrun.com", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_account", "view_project", "view_apikey"])
    )
    sign_in_to_admin(client, viewer)
    row = {"accounts.account": everything, "projects.project": alice_project}.get(model, alice_key)
    url = reverse(f"admin:{model.replace('.', '_')}_changelist")

    listed = client.get(url).content.decode()
    client.post(
        url, {"action": action, ACTION_CHECKBOX_NAME: [row.pk], "apply": "1", "reason": "x"}
    )

    assert f'value="{action}"' not in listed
    row.refresh_from_db()
    assert not getattr(row, "is_suspended", False)
    assert getattr(row, "revoked_at", None) is None
    assert not AuditEvent.objects.filter(actor=viewer).exists()


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (MonthlyUsage, {"notified_quota": "0"}),
        (Invitation, {"role": "member"}),
        # Made at sign-up (or by bootstrap_project) with its owner: added here, it had none.
        (Account, {"name": "Nobody's"}),
    ],
)
def test_rows_made_only_by_the_product_cannot_be_added_in_admin(operator_client, model, data):
    """Their account (and email) are read-only in the form: an added row could only fail."""
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_add")

    response = operator_client.post(url, data)

    assert response.status_code == 403
    assert not model.objects.filter(**data).exists()


def test_secrets_are_never_displayed(operator_client, everything, alice_project, alice_key):
    for url in (
        reverse("admin:projects_project_change", args=[alice_project.pk]),
        reverse("admin:projects_project_changelist"),
        reverse("admin:projects_apikey_change", args=[alice_key.pk]),
        reverse("admin:projects_apikey_changelist"),
    ):
        page = operator_client.get(url).content.decode()
        assert PROVIDER_KEY not in page
        assert "provider_key_encrypted" not in page
        ciphertext = bytes(alice_project.upstreams.get().provider_key_encrypted)
        assert ciphertext[:20].decode() not in page
        assert alice_key.secret_sha256 not in page
        assert alice_key.raw_key.split("_")[2] not in page
    assert (
        "…7f3a"
        in operator_client.get(
            reverse("admin:projects_project_change", args=[alice_project.pk])
        ).content.decode()
    )


def plan_row_form(account: Account, prefix: str = "", **changes: str) -> dict[str, str]:
    """The account's plan row as its admin form posts it, each field with the value the page
    showed (and that again in its hidden initial), with `changes`."""
    state = AccountPlan.objects.get(account=account)
    shown = {
        field: "" if value is None else str(value)
        for field, value in model_to_dict(state, fields=PLAN_STATE_FIELDS).items()
    }
    return {f"{prefix}{field}": value for field, value in (shown | changes).items()} | {
        f"initial-{prefix}{field}": value for field, value in shown.items()
    }


def account_form(account: Account, **plan_state: str) -> dict[str, str]:
    """The account's admin form as an operator posts it, with `plan_state` fields changed."""
    state = AccountPlan.objects.get(account=account)
    memberships = list(account.memberships.order_by("pk"))
    data = {
        "name": account.name,
        "plan_state-TOTAL_FORMS": "1",
        "plan_state-INITIAL_FORMS": "1",
        "plan_state-MIN_NUM_FORMS": "0",
        "plan_state-MAX_NUM_FORMS": "1",
        "plan_state-0-id": str(state.pk),
        "plan_state-0-account": str(account.pk),
        "memberships-TOTAL_FORMS": str(len(memberships)),
        "memberships-INITIAL_FORMS": str(len(memberships)),
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    for number, membership in enumerate(memberships):
        data |= {
            f"memberships-{number}-id": str(membership.pk),
            f"memberships-{number}-account": str(account.pk),
            f"memberships-{number}-user": str(membership.user_id),
            f"memberships-{number}-role": membership.role,
        }
    return data | plan_row_form(account, "plan_state-0-", **plan_state)


def test_plan_and_overrides_are_edited_inline_on_the_account(operator_client, everything, bob):
    account = everything
    url = reverse("admin:accounts_account_change", args=[account.pk])
    page = operator_client.get(url).content.decode()
    assert 'name="plan_state-0-plan"' in page and 'name="plan_state-0-projects"' in page

    response = operator_client.post(url, account_form(account, projects="7"))
    assert response.status_code == 302, response.content.decode()[:3000]
    limits = limits_for(account)
    assert (limits.plan_code, limits.projects, limits.api_keys_per_project) == ("free", 7, 2)
    assert not AuditEvent.objects.filter(action="plan_changed").exists()  # same plan


def test_a_plan_an_operator_assigns_is_in_the_owners_security_log(operator_client, everything):
    account = everything
    pro = Plan.objects.get(code="pro")
    team = Plan.objects.get(code="team")

    response = operator_client.post(
        reverse("admin:accounts_account_change", args=[account.pk]),
        account_form(account, plan=str(pro.pk)),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    state = AccountPlan.objects.get(account=account)
    response = operator_client.post(
        reverse("admin:projects_accountplan_change", args=[state.pk]),
        plan_row_form(account, plan=str(team.pk)),
    )
    assert response.status_code == 302, response.content.decode()[:3000]

    assert limits_for(account).plan_code == "team"
    changes = AuditEvent.objects.filter(account=account, action="plan_changed").order_by("pk")
    assert [(event.target, event.actor.email) for event in changes] == [
        ("Free → Pro", "ops@reqrun.com"),
        ("Pro → Team", "ops@reqrun.com"),
    ]


def test_a_limit_an_operator_overrides_is_in_the_owners_security_log(
    operator_client, everything, alice
):
    """Owners see every change of their account's limits, old and new value, as they see a
    plan change: from the account's page and from the plan row's own."""
    state = AccountPlan.objects.get(account=everything)

    inline = operator_client.post(
        reverse("admin:accounts_account_change", args=[everything.pk]),
        account_form(everything, projects="7"),
    )
    own_page = operator_client.post(
        reverse("admin:projects_accountplan_change", args=[state.pk]),
        plan_row_form(everything, projects="", members="4"),
    )

    assert inline.status_code == 302, inline.content.decode()[:3000]
    assert own_page.status_code == 302, own_page.content.decode()[:3000]
    limits = limits_for(everything)
    assert (limits.projects, limits.members) == (1, 4)
    changes = AuditEvent.objects.filter(account=everything, action="limit_changed")
    assert [(event.target, event.actor.email) for event in changes.order_by("pk")] == [
        ("projects: 1 (Free plan) → 7", "ops@reqrun.com"),
        ("projects: 7 → 1 (Free plan)", "ops@reqrun.com"),
        ("members: 1 (Free plan) → 4", "ops@reqrun.com"),
    ]
    owner = Client()
    owner.force_login(alice)
    assert "Limit changed" in owner.get(reverse("security-log")).content.decode()


def test_an_account_renamed_in_admin_is_in_the_owners_security_log(
    operator_client, everything, alice
):
    response = operator_client.post(
        reverse("admin:accounts_account_change", args=[everything.pk]),
        account_form(everything) | {"name": "Acme"},
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    assert Account.objects.get(pk=everything.pk).name == "Acme"
    [event] = AuditEvent.objects.filter(account=everything, action="account_renamed")
    assert (event.target, event.actor.email) == ("Alice's workspace → Acme", "ops@reqrun.com")
    owner = Client()
    owner.force_login(alice)
    assert "Account renamed" in owner.get(reverse("security-log")).content.decode()


def test_an_override_saved_in_admin_keeps_a_plan_billing_set_meanwhile(operator_client, everything):
    state = AccountPlan.objects.get(account=everything)
    pro = Plan.objects.get(code="pro")

    with written_meanwhile(AccountPlan, state.pk, plan=pro):
        response = operator_client.post(
            reverse("admin:projects_accountplan_change", args=[state.pk]),
            plan_row_form(everything, members="4"),
        )

    assert response.status_code == 302, response.content.decode()[:3000]
    limits = limits_for(everything)
    assert (limits.plan_code, limits.members) == ("pro", 4)


def plan_pages(account: Account) -> dict[str, tuple[str, str, str]]:
    """The two admin pages that edit the account's plan row: url, form id, fields' prefix."""
    state = AccountPlan.objects.get(account=account)
    return {
        "account": (
            reverse("admin:accounts_account_change", args=[account.pk]),
            "account_form",
            "plan_state-0-",
        ),
        "plan row": (
            reverse("admin:projects_accountplan_change", args=[state.pk]),
            "accountplan_form",
            "",
        ),
    }


@pytest.mark.parametrize("page", ["account", "plan row"])
@pytest.mark.parametrize(("field", "value"), [("projects", "7"), ("plan", "team")])
def test_a_plan_row_saved_from_a_page_opened_before_billing_changed_it_is_refused(
    operator_client, everything, page, field, value
):
    """The page showed Free; Paddle's webhook moved the account to Pro meanwhile. A limit
    chosen for Free, or a plan chosen over one the operator never saw, is not saved onto Pro:
    the operator is told to reload."""
    url, form_id, prefix = plan_pages(everything)[page]
    shown = form_data(operator_client.get(url).content.decode(), form_id)
    set_plan(account=everything, plan_code="pro")  # billing, while the page is open
    posted = str(Plan.objects.get(code=value).pk) if field == "plan" else value

    response = operator_client.post(url, shown | {prefix + field: [posted]})

    assert response.status_code == 200
    assert (
        "This account's plan was changed to Pro while you had this page open; reload it."
        in unescape(response.content.decode())
    )
    state = AccountPlan.objects.get(account=everything)
    assert (state.plan.code, state.projects) == ("pro", None)
    assert not AuditEvent.objects.filter(actor__email="ops@reqrun.com").exists()


def test_a_limit_set_by_another_operator_while_the_page_was_open_is_named(
    operator_client, everything
):
    url, form_id, prefix = plan_pages(everything)["plan row"]
    shown = form_data(operator_client.get(url).content.decode(), form_id)
    AccountPlan.objects.filter(account=everything).update(members=4)  # another operator's

    response = operator_client.post(url, shown | {prefix + "projects": ["7"]})

    assert (
        "This account's members limit was changed to 4 while you had this page open; reload it."
        in unescape(response.content.decode())
    )
    assert AccountPlan.objects.get(account=everything).projects is None


def test_an_account_renamed_on_a_page_opened_before_billing_changed_its_plan_keeps_the_plan(
    operator_client, everything
):
    """The plan the page showed is posted back untouched: it is not a change of the
    operator's, and is not written over the one billing set."""
    url, form_id, _ = plan_pages(everything)["account"]
    shown = form_data(operator_client.get(url).content.decode(), form_id)
    set_plan(account=everything, plan_code="pro")

    response = operator_client.post(url, shown | {"name": ["Acme"]})

    assert response.status_code == 302, response.content.decode()[:3000]
    assert Account.objects.get(pk=everything.pk).name == "Acme"
    assert limits_for(everything).plan_code == "pro"
    assert not AuditEvent.objects.filter(actor__email="ops@reqrun.com", action="plan_changed")


def test_an_account_renamed_in_admin_keeps_a_suspension_set_meanwhile(operator_client, everything):
    suspended_at = timezone.now()

    with written_meanwhile(
        Account, everything.pk, suspended_at=suspended_at, suspension_reason="Abuse"
    ):
        response = operator_client.post(
            reverse("admin:accounts_account_change", args=[everything.pk]),
            account_form(everything) | {"name": "Acme"},
        )

    assert response.status_code == 302, response.content.decode()[:3000]
    account = Account.objects.get(pk=everything.pk)
    assert (account.name, account.suspended_at, account.suspension_reason) == (
        "Acme",
        suspended_at,
        "Abuse",
    )


def test_a_plan_row_an_operator_adds_is_audited_as_a_change_from_free(operator_client, charlie):
    account = Account.objects.get(memberships__user=charlie)
    AccountPlan.objects.filter(account=account).delete()  # made on first use, not yet here

    response = operator_client.post(
        reverse("admin:projects_accountplan_add"),
        {"account": str(account.pk), "plan": str(Plan.objects.get(code="pro").pk)},
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    assert limits_for(account).plan_code == "pro"
    [change] = AuditEvent.objects.filter(account=account, action="plan_changed")
    assert change.target == "Free → Pro"


def suspend(client, model, subject, reason):
    return client.post(
        reverse(f"admin:{model}_changelist"),
        {
            "action": "suspend_selected",
            ACTION_CHECKBOX_NAME: [subject.pk],
            "apply": "yes",
            "reason": reason,
        },
    )


def project_form(account: Account, name: str) -> dict[str, str]:
    """A project's admin form as an operator posts it, with no upstream or key rows."""
    return {
        "account": str(account.pk),
        "name": name,
        "attempt_timeout_seconds": "60",
        "deadline_seconds": "900",
        "failover_on": "timeout",
        "failover_tries_per_upstream": "1",
        "upstreams-TOTAL_FORMS": "0",
        "upstreams-INITIAL_FORMS": "0",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
    }


def test_a_project_or_a_plan_row_stays_with_its_account(
    operator_client, everything, alice_project, charlie
):
    """Moving a project would leave its requests, pending slots and usage with the old
    account; moving a plan row would hand one account's plan to another, unaudited."""
    other = Account.objects.get(memberships__user=charlie)
    state = AccountPlan.objects.get(account=everything)

    operator_client.post(
        reverse("admin:projects_project_change", args=[alice_project.pk]),
        project_form(other, alice_project.name),
    )
    operator_client.post(
        reverse("admin:projects_accountplan_change", args=[state.pk]),
        plan_row_form(everything) | {"account": str(other.pk)},
    )

    assert Project.objects.get(pk=alice_project.pk).account_id == everything.pk
    assert AccountPlan.objects.get(pk=state.pk).account_id == everything.pk


def test_suspend_and_lift_an_account(operator_client, everything):
    account = everything
    response = operator_client.post(
        reverse("admin:accounts_account_changelist"),
        {
            "action": "suspend_selected",
            ACTION_CHECKBOX_NAME: [account.pk],
        },
    )
    assert response.status_code == 200 and 'name="reason"' in response.content.decode()
    response = suspend(operator_client, "accounts_account", account, "")
    assert "This field is required" in response.content.decode()
    account.refresh_from_db()
    assert not account.is_suspended

    response = suspend(operator_client, "accounts_account", account, "Unpaid invoices")
    assert response.status_code == 302
    account.refresh_from_db()
    assert account.is_suspended and account.suspension_reason == "Unpaid invoices"
    event = AuditEvent.objects.get(account=account, action="suspended")
    assert event.actor.email == "ops@reqrun.com"
    assert event.target == f"{account.public_id}: Unpaid invoices"
    assert Project.objects.filter(account=account).count() == 1  # nothing deleted
    assert ApiKey.objects.filter(project__account=account, revoked_at__isnull=True).count() == 1

    operator_client.post(
        reverse("admin:accounts_account_changelist"),
        {
            "action": "unsuspend_selected",
            ACTION_CHECKBOX_NAME: [account.pk],
        },
    )
    account.refresh_from_db()
    assert not account.is_suspended and account.suspension_reason == ""
    assert AuditEvent.objects.filter(account=account, action="unsuspended").exists()


def test_suspended_project_shows_a_banner(operator_client, everything, alice_project, client):
    suspend(operator_client, "projects_project", alice_project, "Abuse report #42")
    alice_project.refresh_from_db()
    assert alice_project.is_suspended
    assert AuditEvent.objects.filter(
        action="suspended", target=f"{alice_project.public_id}: Abuse report #42"
    ).exists()
    client.force_login(Account.objects.get(pk=everything.pk).memberships.get(role="owner").user)
    for name in ("project-detail", "api-key-list"):
        page = client.get(reverse(name, args=[alice_project.public_id])).content.decode()
        assert "This project is suspended: Abuse report #42" in page


def test_a_role_changed_in_admin_goes_through_the_dashboards_rules(
    operator_client, everything, alice, bob
):
    owner = Membership.objects.get(user=alice, account=everything)
    member = Membership.objects.get(user=bob, account=everything)

    demoted = operator_client.post(
        reverse("admin:accounts_membership_change", args=[owner.pk]), {"role": "member"}
    )
    operator_client.post(  # the account's own form lists its members, read-only
        reverse("admin:accounts_account_change", args=[everything.pk]),
        account_form(everything) | {"memberships-0-role": "member"},
    )
    operator_client.post(
        reverse("admin:accounts_membership_change", args=[member.pk]), {"role": "admin"}
    )

    assert demoted.status_code == 200
    assert "An account needs at least one owner" in demoted.content.decode()
    owner.refresh_from_db()
    member.refresh_from_db()
    assert (owner.role, member.role) == ("owner", "admin")
    [event] = AuditEvent.objects.filter(account=everything, action="role_changed")
    assert event.target == "bob@example.com: member → admin"
    assert event.actor.email == "ops@reqrun.com"


def test_a_member_removed_in_admin_is_audited_and_the_last_owner_stays(
    operator_client, everything, alice, bob
):
    owner = Membership.objects.get(user=alice, account=everything)
    member = Membership.objects.get(user=bob, account=everything)

    refused = operator_client.post(
        reverse("admin:accounts_membership_delete", args=[owner.pk]), {"post": "yes"}
    )
    operator_client.post(
        reverse("admin:accounts_membership_delete", args=[member.pk]), {"post": "yes"}
    )
    added = operator_client.post(
        reverse("admin:accounts_membership_add"),
        {"user": bob.pk, "account": everything.pk, "role": "owner"},
    )

    assert refused.status_code == 403
    assert added.status_code == 403  # members join by invitation, within the plan's seats
    assert list(Membership.objects.filter(account=everything)) == [owner]
    [event] = AuditEvent.objects.filter(account=everything, action="member_removed")
    assert (event.target, event.actor.email) == ("bob@example.com", "ops@reqrun.com")


def test_revoking_a_key_in_admin_is_audited(operator_client, everything, alice_key):
    operator_client.post(
        reverse("admin:projects_apikey_changelist"),
        {
            "action": "revoke_selected",
            ACTION_CHECKBOX_NAME: [alice_key.pk],
        },
    )
    alice_key.refresh_from_db()
    assert alice_key.revoked_at is not None
    assert AuditEvent.objects.filter(action="api_key_revoked", actor__email="ops@reqrun.com")


def test_the_project_shows_each_upstreams_breaker_and_the_failover_policy(
    operator_client, everything, alice_project
):
    alice_project.upstreams.update(breaker_open_until=timezone.now() + timedelta(minutes=5))

    page = operator_client.get(
        reverse("admin:projects_project_change", args=[alice_project.pk])
    ).content.decode()

    assert "open until" in page
    assert 'name="failover_tries_per_upstream"' in page
    assert 'name="failover_return_to_primary"' in page


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failover_tries_per_upstream", 11),
        ("deadline_seconds", 86_401),
        ("attempt_timeout_seconds", 601),
        ("deadline_seconds", 30),  # shorter than one attempt's timeout (60)
    ],
)
def test_the_admin_form_keeps_the_dashboards_bounds(alice_project, field, value):
    data = {
        "account": alice_project.account_id,
        "name": alice_project.name,
        "attempt_timeout_seconds": 60,
        "deadline_seconds": 900,
        "failover_on": "connection_error,timeout",
        "failover_tries_per_upstream": 1,
        field: value,
    }

    form = ProjectAdminForm(data=data, instance=alice_project)

    assert not form.is_valid()
    assert field in form.errors


def test_a_project_is_deleted_in_the_admin_only_once_its_requests_have_finished(
    operator_client, alice_project
):
    RequestFactory(project=alice_project, status="retrying")
    delete = reverse("admin:projects_project_delete", args=[alice_project.pk])
    changelist = reverse("admin:projects_project_changelist")

    refused = operator_client.post(delete, {"post": "yes"})
    operator_client.post(
        changelist,
        {"action": "delete_selected", ACTION_CHECKBOX_NAME: [alice_project.pk], "post": "yes"},
    )

    assert refused.status_code == 403
    assert Project.objects.filter(pk=alice_project.pk).exists()
    Request.objects.update(status="succeeded", finished_at=timezone.now())
    operator_client.post(delete, {"post": "yes"})
    assert Project.objects.get(pk=alice_project.pk).deleted_at is not None  # the service's
    assert AuditEvent.objects.filter(action="project_deleted").exists()


def test_the_admins_delete_page_neither_reads_nor_deletes_the_projects_requests(
    operator_client, alice_project
):
    finished = RequestFactory.create_batch(
        3, project=alice_project, status="succeeded", finished_at=timezone.now()
    )
    delete = reverse("admin:projects_project_delete", args=[alice_project.pk])

    confirmation = operator_client.get(delete).content.decode()
    operator_client.post(delete, {"post": "yes"})

    assert not any(request.public_id in confirmation for request in finished)  # none read
    assert "requests and attempts are deleted by a worker" in " ".join(confirmation.split())
    assert Request.objects.filter(project=alice_project).count() == 3  # the worker's job
    assert operator_client.get(delete).status_code == 403  # already being deleted


def plan_form(plan: Plan, **changes: str) -> dict[str, str]:
    """The plan's admin form as an operator posts it, with `changes`."""
    data = {
        field.name: "" if getattr(plan, field.name) is None else str(getattr(plan, field.name))
        for field in Plan._meta.fields
        if field.name not in ("id", "self_serve")
    }
    return data | ({"self_serve": "on"} if plan.self_serve else {}) | changes


@pytest.mark.parametrize(
    ("price_id", "error"),
    [
        ("price_123", "Paddle price id"),
        ("pri_01HV8 TEAM", "Paddle price id"),
        ("pri_01hv8team000000000000000", "already"),  # Team's
    ],
)
def test_a_plan_price_id_must_be_paddles_and_its_own(operator_client, price_id, error):
    Plan.objects.filter(code="team").update(paddle_price_id="pri_01hv8team000000000000000")
    pro = Plan.objects.get(code="pro")

    response = operator_client.post(
        reverse("admin:projects_plan_change", args=[pro.pk]),
        plan_form(pro, paddle_price_id=price_id, projects="6"),
    )

    assert response.status_code == 200
    assert error in response.content.decode()
    pro.refresh_from_db()
    assert (pro.paddle_price_id, pro.projects) == ("", 5)


def test_a_plans_code_stays_and_the_default_plan_cannot_be_deleted(operator_client):
    free = Plan.objects.get(code="free")

    changed = operator_client.post(
        reverse("admin:projects_plan_change", args=[free.pk]),
        plan_form(free, code="basic", projects="2"),
    )
    deleted = operator_client.post(
        reverse("admin:projects_plan_delete", args=[free.pk]), {"post": "yes"}
    )

    assert changed.status_code == 302
    assert deleted.status_code == 403
    free.refresh_from_db()
    assert (free.code, free.projects) == ("free", 2)


@pytest.mark.parametrize("model", [Plan, AccountPlan])
@pytest.mark.parametrize("field", ["concurrency", "max_attempts"])
def test_a_limit_that_would_strand_requests_cannot_be_zero(everything, model, field):
    # Concurrency 0 leaves every accepted request queued until its deadline; 0 attempts
    # means none may run. Neither is a limit an operator means to set.
    form_class = modelform_factory(model, fields=[field])

    form = form_class(data={field: "0"})

    assert not form.is_valid()
    assert field in form.errors
    assert form_class(data={field: "1"}).is_valid()


def test_a_project_added_in_admin_keeps_the_plans_limit(operator_client, everything, alice_project):
    """Free allows one project and alice has it: the admin refuses a second, as the dashboard
    does, and names the limit on the form."""
    response = operator_client.post(
        reverse("admin:projects_project_add"), project_form(everything, "Second")
    )

    assert response.status_code == 200
    assert "The Free plan allows 1 project." in response.content.decode()
    assert list(Project.objects.filter(account=everything)) == [alice_project]


def test_a_project_added_in_admin_is_made_as_the_dashboard_makes_it(operator_client, charlie):
    """With its primary upstream, under a name the account has not used in any case, and
    in the account's security log."""
    account = Account.objects.get(memberships__user=charlie)
    set_plan(account=account, plan_code="pro")
    Project.objects.create(account=account, name="Chatbot")
    add = reverse("admin:projects_project_add")

    taken = operator_client.post(add, project_form(account, "chatbot"))
    response = operator_client.post(add, project_form(account, "Search"))

    assert "Another project is already named “chatbot”" in taken.content.decode()
    assert response.status_code == 302, response.content.decode()[:3000]
    project = Project.objects.get(account=account, name="Search")
    assert [upstream.name for upstream in project.upstreams.all()] == ["primary"]
    event = AuditEvent.objects.get(account=account, action="project_created")
    assert (event.target, event.actor.email) == (f"{project.public_id} Search", "ops@reqrun.com")


def test_a_withdrawn_invitation_is_not_revived_in_admin(operator_client, alice, alice_invitation):
    """Its fields are the product's: clearing "revoked at" would make a withdrawn link work
    again, and a new role would not be the one the email offered."""
    revoke_invitation(invitation=alice_invitation, actor=alice)

    response = operator_client.post(
        reverse("admin:projects_invitation_change", args=[alice_invitation.pk]),
        {"role": "owner", "revoked_at_0": "", "revoked_at_1": ""},
    )

    # Read-only, and not saved either: a save writes back the row as read, undoing an
    # acceptance or a withdrawal landing meanwhile.
    assert response.status_code == 403
    alice_invitation.refresh_from_db()
    assert alice_invitation.revoked_at is not None
    assert alice_invitation.role == "member"


def test_an_invitation_is_withdrawn_in_admin_as_in_the_dashboard(
    operator_client, everything, alice_invitation
):
    operator_client.post(
        reverse("admin:projects_invitation_changelist"),
        {"action": "withdraw_selected", ACTION_CHECKBOX_NAME: [alice_invitation.pk]},
    )

    alice_invitation.refresh_from_db()
    assert alice_invitation.revoked_at is not None
    [event] = AuditEvent.objects.filter(account=everything, action="invitation_withdrawn")
    assert (event.target, event.actor.email) == ("dana@example.com", "ops@reqrun.com")


def test_a_projects_upstreams_keep_the_dashboards_rules_in_admin(operator_client, alice_project):
    """Only the primary, on Free (one upstream): removing or disabling it would leave
    requests nowhere to go, and a second is above the plan's cap. Upstreams are added,
    removed, enabled and ordered in the dashboard; here their host and model map change."""
    primary = alice_project.upstreams.get()
    form = project_form(alice_project.account, alice_project.name) | {
        "upstreams-TOTAL_FORMS": "2",
        "upstreams-INITIAL_FORMS": "1",
        "upstreams-0-id": str(primary.pk),
        "upstreams-0-project": str(alice_project.pk),
        "upstreams-0-name": "renamed",
        "upstreams-0-position": "3",
        "upstreams-0-base_url": primary.base_url,
        "upstreams-0-model_map": '{"gpt-4o": "gpt-4o-mini"}',
        "upstreams-0-DELETE": "on",
        "upstreams-1-project": str(alice_project.pk),
        "upstreams-1-name": "fallback-1",
        "upstreams-1-position": "1",
        "upstreams-1-base_url": "https://llm.example.net/v1",
        "upstreams-1-model_map": "{}",
        "upstreams-1-enabled": "on",
    }

    response = operator_client.post(
        reverse("admin:projects_project_change", args=[alice_project.pk]), form
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    [upstream] = alice_project.upstreams.all()
    assert (upstream.pk, upstream.name, upstream.position, upstream.enabled) == (
        primary.pk,
        "primary",
        0,
        True,
    )
    assert upstream.model_map == {"gpt-4o": "gpt-4o-mini"}


def test_an_accounts_plan_row_is_changed_not_deleted(operator_client, everything):
    """Deleting it would move the account to Free with no entry in its security log."""
    set_plan(account=everything, plan_code="pro")
    state = AccountPlan.objects.get(account=everything)

    response = operator_client.post(
        reverse("admin:projects_accountplan_delete", args=[state.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert limits_for(everything).plan_code == "pro"


def project_change_form(project: Project, **changes: str | None) -> dict[str, str]:
    """A project's admin change form as its page shows it, with `changes` (None: a box left
    unticked)."""
    data = project_form(project.account, project.name) | {
        "max_attempts": "" if project.max_attempts is None else str(project.max_attempts),
        "attempt_timeout_seconds": str(project.attempt_timeout_seconds),
        "deadline_seconds": str(project.deadline_seconds),
        "failover_on": ",".join(project.failover_on),
        "failover_tries_per_upstream": str(project.failover_tries_per_upstream),
        "zero_retention": "on" if project.zero_retention else None,
        "failover_return_to_primary": "on" if project.failover_return_to_primary else None,
    }
    return {key: value for key, value in (data | changes).items() if value is not None}


def test_a_project_renamed_in_admin_is_renamed_as_in_the_dashboard(
    operator_client, everything, alice_project
):
    """Under a name no other live project of the account has, in any case, and in the
    account's security log."""
    set_plan(account=everything, plan_code="pro")
    Project.objects.create(account=everything, name="Search")
    change = reverse("admin:projects_project_change", args=[alice_project.pk])

    taken = operator_client.post(change, project_change_form(alice_project, name="search"))
    renamed = operator_client.post(change, project_change_form(alice_project, name="Support"))

    assert "Another project is already named “search”" in taken.content.decode()
    assert renamed.status_code == 302, renamed.content.decode()[:3000]
    alice_project.refresh_from_db()
    assert alice_project.name == "Support"
    [event] = AuditEvent.objects.filter(account=everything, action="project_renamed")
    assert (event.target, event.actor.email) == (
        f"{alice_project.public_id} Support",
        "ops@reqrun.com",
    )


def test_a_failover_policy_changed_in_admin_is_audited_and_starts_where_it_says(
    operator_client, everything, alice_project
):
    """Switching "return to the primary" off forgets where an earlier request succeeded, as
    the dashboard does: requests start on the primary until one succeeds elsewhere."""
    Project.objects.filter(pk=alice_project.pk).update(failover_current="fallback-1")
    alice_project.refresh_from_db()
    change = reverse("admin:projects_project_change", args=[alice_project.pk])

    response = operator_client.post(
        change, project_change_form(alice_project, failover_return_to_primary=None)
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    alice_project.refresh_from_db()
    assert (alice_project.failover_return_to_primary, alice_project.failover_current) == (
        False,
        "",
    )
    [event] = AuditEvent.objects.filter(account=everything, action="failover_policy_changed")
    assert event.actor.email == "ops@reqrun.com"
    assert "start at where the last request succeeded" in event.target


def test_a_retry_policy_changed_in_admin_keeps_the_plans_attempts(
    operator_client, everything, alice_project
):
    cap = limits_for(everything).max_attempts
    change = reverse("admin:projects_project_change", args=[alice_project.pk])

    above = operator_client.post(
        change, project_change_form(alice_project, max_attempts=str(cap + 1))
    )
    within = operator_client.post(
        change, project_change_form(alice_project, max_attempts=str(cap), deadline_seconds="600")
    )

    assert f"The Free plan allows at most {cap} attempts." in above.content.decode()
    assert within.status_code == 302, within.content.decode()[:3000]
    alice_project.refresh_from_db()
    assert (alice_project.max_attempts, alice_project.deadline_seconds) == (cap, 600)


def test_a_model_map_changed_in_admin_is_audited_as_in_the_dashboard(
    operator_client, everything, alice_project
):
    primary = alice_project.upstreams.get()
    form = project_change_form(alice_project) | {
        "upstreams-TOTAL_FORMS": "1",
        "upstreams-INITIAL_FORMS": "1",
        "upstreams-0-id": str(primary.pk),
        "upstreams-0-project": str(alice_project.pk),
        "upstreams-0-base_url": primary.base_url,
        "upstreams-0-model_map": '{"gpt-4o": "gpt-4o-mini"}',
    }

    response = operator_client.post(
        reverse("admin:projects_project_change", args=[alice_project.pk]), form
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    assert alice_project.upstreams.get().model_map == {"gpt-4o": "gpt-4o-mini"}
    [event] = AuditEvent.objects.filter(account=everything, action="upstream_changed")
    assert (event.target, event.actor.email) == (
        f"{alice_project.public_id} primary model map",
        "ops@reqrun.com",
    )


def test_a_deleted_projects_settings_are_not_changed_in_admin(
    operator_client, everything, alice_project
):
    """It waits for its purge; the services refuse it, as it is gone for its account."""
    Project.objects.filter(pk=alice_project.pk).update(deleted_at=timezone.now())
    change = reverse("admin:projects_project_change", args=[alice_project.pk])

    response = operator_client.post(change, project_change_form(alice_project, name="Support"))

    assert response.status_code == 403
    assert Project.objects.get(pk=alice_project.pk).name == "Chatbot"


def test_a_keys_name_is_not_changed_in_admin(operator_client, alice_key):
    """The dashboard names a key once, unique among the project's active keys; the admin
    only revokes it."""
    response = operator_client.post(
        reverse("admin:projects_apikey_change", args=[alice_key.pk]), {"name": "staging"}
    )

    assert response.status_code == 403
    alice_key.refresh_from_db()
    assert alice_key.name == "production"


def test_the_usage_notices_sent_are_not_cleared_in_admin(operator_client, everything):
    """Cleared (or the month's row deleted), the same notices would go out again."""
    usage = MonthlyUsage.objects.get(account=everything)
    sent_at = timezone.now()
    MonthlyUsage.objects.filter(pk=usage.pk).update(
        notified_80_at=sent_at, notified_100_at=sent_at, notified_quota=1000
    )

    changed = operator_client.post(
        reverse("admin:projects_monthlyusage_change", args=[usage.pk]),
        {
            "notified_80_at_0": "",
            "notified_80_at_1": "",
            "notified_100_at_0": "",
            "notified_100_at_1": "",
        },
    )
    deleted = operator_client.post(
        reverse("admin:projects_monthlyusage_delete", args=[usage.pk]), {"post": "yes"}
    )

    assert (changed.status_code, deleted.status_code) == (403, 403)
    usage = MonthlyUsage.objects.get(pk=usage.pk)
    assert (usage.notified_80_at, usage.notified_100_at, usage.notified_quota) == (
        sent_at,
        sent_at,
        1000,
    )


def test_the_audit_trail_is_not_deleted_in_admin(operator_client, everything):
    """It is the owners' evidence of who did what: operators read it."""
    event = AuditEventFactory(account=everything)

    assert delete_in_admin(operator_client, event) == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_an_accounts_closing_mark_is_not_set_in_admin(operator_client, everything):
    """The mark holds membership changes while an owner's deletion is at Paddle: set by
    hand it would hold them (and the deletion) for nothing; cleared, it would let them run
    in the middle of one."""
    operator_client.post(
        reverse("admin:accounts_account_change", args=[everything.pk]),
        account_form(everything) | {"closing_since_0": "2025-01-01", "closing_since_1": "12:00"},
    )

    assert Account.objects.get(pk=everything.pk).closing_since is None
