"""Operators' admin for plans, account plans and overrides, memberships, usage, projects
with their upstreams, API keys and invitations. Provider key ciphertext and API key hashes are never
displayed."""

from django import forms
from django.contrib import admin
from django.db import transaction
from django.utils import timezone

from accounts.access import client_ip
from accounts.admin import AccountAdmin as BaseAccountAdmin
from accounts.admin import SuspensionActions
from accounts.admin import UserAdmin as BaseUserAdmin
from accounts.models import Account, Membership, User
from core.admin import KeptRecord, ViewOnly
from projects.errors import Gone, InvalidModelMap, NameNotAvailable
from projects.forms import check_deadline_covers_an_attempt
from projects.limits import (
    DEFAULT_PLAN_CODE,
    LimitReached,
    change_account_plan,
    limit_shown,
    limits_for,
    locked_plan_state,
)
from projects.members import (
    LAST_OWNER,
    change_role,
    is_last_owner,
    remove_member,
    revoke_invitation,
)
from projects.models import (
    LIMIT_FIELDS,
    AccountPlan,
    ApiKey,
    Invitation,
    MonthlyUsage,
    Plan,
    Project,
    Upstream,
)
from projects.selectors import unfinished_requests
from projects.services import (
    check_new_project,
    check_project_rename,
    create_project,
    delete_project,
    rename_project,
    revoke_api_key,
    suspend_project,
    unsuspend_project,
    update_failover_policy,
    update_retry_policy,
)
from projects.upstream_guard import UpstreamNotAllowed, validate_upstream_url
from projects.upstreams import check_model_map, update_upstream


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "code",
        "price_cents_monthly",
        "paddle_price_id",
        "self_serve",
        "projects",
        "api_keys_per_project",
        "upstreams_per_project",
        "monthly_requests",
        "members",
    ]
    search_fields = ["code", "name", "paddle_price_id"]
    ordering = ["sort_order"]

    # The code is how PADDLE_PRICES, `bootstrap_project --plan`, /v1/usage and the fallback
    # to Free name a plan: set once, when the plan is added.
    def get_readonly_fields(self, request, obj=None):
        return ["code"] if obj else []

    def has_delete_permission(self, request, obj=None):
        return obj is None or obj.code != DEFAULT_PLAN_CODE


# What an operator edits of an account's plan row, on the account's page and on the row's own.
PLAN_STATE_FIELDS = ["plan", *LIMIT_FIELDS]


class AccountPlanForm(forms.ModelForm):
    """The plan row as the page showed it: each field posts back the value shown (a hidden
    initial), so only what the operator changed counts as changed, and a plan billing set
    meanwhile is not posted back over. A change saved from a page the row has moved on since
    (billing's plan, another operator's limit) is refused: it was chosen over a value the
    operator never saw. Compared under the row's lock, which the admin's transaction holds
    until the save."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in PLAN_STATE_FIELDS:
            self.fields[name].show_hidden_initial = True

    def clean(self):
        cleaned_data = super().clean()
        if self.instance.pk is None or not self.has_changed():
            return cleaned_data
        current = locked_plan_state(self.instance.account)
        for name in PLAN_STATE_FIELDS:
            if self._shown(name) != getattr(current, name):
                raise forms.ValidationError(
                    f"This account's {_moved(current, name)} while you had this page open; "
                    "reload it."
                )
        return cleaned_data

    def _shown(self, name: str):
        """The field's value as the page showed it; a value unreadable as one is none the row
        can hold."""
        field = self[name]
        shown = field.field.hidden_widget().value_from_datadict(
            self.data, self.files, field.html_initial_name
        )
        try:
            return field.field.to_python(shown)
        except forms.ValidationError:
            return object()


def _moved(state: AccountPlan, field: str) -> str:
    if field == "plan":
        return f"plan was changed to {state.plan.name}"
    limit = AccountPlan._meta.get_field(field).verbose_name
    return f"{limit} limit was changed to {limit_shown(getattr(state, field), state.plan, field)}"


class AccountPlanInline(admin.StackedInline):
    """The account's plan and any single limit overridden for it (empty: the plan's value)."""

    model = AccountPlan
    form = AccountPlanForm
    can_delete = False
    extra = 0
    min_num = 0
    max_num = 1
    fields = PLAN_STATE_FIELDS


def save_plan_state(request, account: Account, form: forms.ModelForm) -> AccountPlan:
    """An AccountPlanForm is saved by `change_account_plan`: only the fields the operator
    changed, each change in the owners' security log."""
    return change_account_plan(
        account=account,
        changes={
            field: form.cleaned_data[field]
            for field in form.changed_data
            if field in PLAN_STATE_FIELDS
        },
        actor=request.user,
        ip_address=client_ip(request),
    )


# Account's admin lives in accounts, which cannot know about plans; add the plan inline here.
admin.site.unregister(Account)


@admin.register(Account)
class AccountAdmin(BaseAccountAdmin):
    inlines = [AccountPlanInline, *BaseAccountAdmin.inlines]

    def save_formset(self, request, form, formset, change):
        if formset.model is not AccountPlan:
            super().save_formset(request, form, formset, change)
            return
        formset.save(commit=False)  # what changed, for the admin's history
        for plan_form in formset.forms:
            if plan_form.has_changed():
                save_plan_state(request, form.instance, plan_form)


# User's admin lives in accounts too: a login deleted there leaves each of its accounts as
# the dashboard's removal of a member does, in the account's security log. (An account's only
# owner is never deleted there: accounts/admin.py protects it.)
admin.site.unregister(User)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    def delete_model(self, request, obj):
        with transaction.atomic():
            _remove_from_accounts(request, [obj])
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            _remove_from_accounts(request, queryset)
            super().delete_queryset(request, queryset)


def _remove_from_accounts(request, users) -> None:
    memberships = Membership.objects.filter(user__in=users).select_related("user", "account")
    for membership in memberships.order_by("pk"):
        remove_member(membership=membership, actor=request.user, ip_address=client_ip(request))


def account_once_saved(obj) -> list[str]:
    """A saved row stays with its account: a project moved to another would leave its
    requests, pending slots and usage behind; a plan row moved would hand over a plan."""
    return ["account"] if obj is not None else []


@admin.register(AccountPlan)
class AccountPlanAdmin(admin.ModelAdmin):
    form = AccountPlanForm
    list_display = ["account", "plan", "changed_at"]
    list_filter = ["plan"]
    list_select_related = ["account", "plan"]
    search_fields = ["account__public_id", "account__name", "account__memberships__user__email"]
    autocomplete_fields = ["account"]

    def get_readonly_fields(self, request, obj=None):
        return account_once_saved(obj)

    # Deleting the row would put the account on Free unaudited: choose Free instead.
    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        state = save_plan_state(request, obj.account, form)
        obj.pk = state.pk  # the admin goes on with its own instance: make it the row as saved
        obj.refresh_from_db()


class MembershipAdminForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["role"]

    def clean_role(self) -> str:
        role = self.cleaned_data["role"]
        if role != Membership.Role.OWNER and is_last_owner(self.instance):
            raise forms.ValidationError(LAST_OWNER)
        return role


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """A role changes, and a member is removed, through the dashboard's services: audited,
    and the account keeps an owner. Members join by invitation, within the plan's seats."""

    form = MembershipAdminForm
    list_display = ["user", "account", "role", "created_at"]
    list_select_related = ["user", "account"]
    search_fields = ["user__email", "account__public_id", "account__name"]
    list_filter = ["role"]
    readonly_fields = ["user", "account", "created_at"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return obj is None or not is_last_owner(obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request, obj, form, change):
        change_role(
            membership=obj,
            role=form.cleaned_data["role"],
            actor=request.user,
            ip_address=client_ip(request),
        )

    def delete_model(self, request, obj):
        remove_member(membership=obj, actor=request.user, ip_address=client_ip(request))


@admin.register(MonthlyUsage)
class MonthlyUsageAdmin(KeptRecord, admin.ModelAdmin):
    """A month's row is made by the first request accepted in it. Its notices are claimed by
    its notified_* fields, which the usage-notice service alone sets: cleared, or the row
    deleted, its 80% and 100% emails would go out again."""

    list_display = [
        "account",
        "period_start",
        "accepted_requests",
        "notified_80_at",
        "notified_100_at",
        "notified_quota",
    ]
    list_select_related = ["account"]
    search_fields = ["account__public_id", "account__name"]
    date_hierarchy = "period_start"
    # The count is the sum of the month's stripes, kept by the accepts alone; an account's
    # quota is changed with its limit overrides, not by editing what it used.
    readonly_fields = ["account", "period_start", "accepted_requests"]

    def get_queryset(self, request):
        return super().get_queryset(request).with_accepted()

    @admin.display(description="Accepted requests", ordering="accepted_requests")
    def accepted_requests(self, usage: MonthlyUsage) -> int:
        return usage.accepted_requests


@admin.display(description="Key")
def key_prefix(api_key: ApiKey) -> str:
    """What identifies a key to people: its public prefix, never the hash."""
    return f"rr_{api_key.prefix}_…"


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ["public_id", "name", key_prefix, "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False  # keys are created in the dashboard, where the full key is shown once


class UpstreamAdminForm(forms.ModelForm):
    base_url = forms.CharField(max_length=500)

    class Meta:
        model = Upstream
        fields = ["base_url", "model_map"]

    def clean_base_url(self) -> str:
        try:
            return validate_upstream_url(self.cleaned_data["base_url"])
        except UpstreamNotAllowed as error:
            raise forms.ValidationError(str(error)) from error

    def clean_model_map(self) -> dict:
        try:
            return check_model_map(self.cleaned_data["model_map"] or {})
        except InvalidModelMap as error:
            raise forms.ValidationError(str(error)) from error


class UpstreamInline(admin.TabularInline):
    """The project's upstreams in order; keys are set in the dashboard, shown as last 4.

    Here an upstream's host and model map change. It is added, removed, renamed, reordered,
    enabled or disabled in the dashboard, whose services keep the plan's cap, names the
    engine and the failover policy use, one row per position, and one enabled upstream at
    least (the inline would have deleted or disabled the last one, or added past the cap)."""

    model = Upstream
    form = UpstreamAdminForm
    extra = 0
    can_delete = False
    fields = ["name", "position", "base_url", "provider_key", "model_map", "enabled", "breaker"]
    readonly_fields = ["name", "position", "provider_key", "enabled", "breaker"]

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="Provider key")
    def provider_key(self, upstream: Upstream) -> str:
        return f"…{upstream.provider_key_last4}" if upstream.has_provider_key else "—"

    @admin.display(description="Circuit breaker")
    def breaker(self, upstream: Upstream) -> str:
        if upstream.breaker_open_until is None:
            return "closed"
        if upstream.breaker_open_until > timezone.now():
            return f"open until {upstream.breaker_open_until:%Y-%m-%d %H:%M:%S} UTC"
        return "half-open (the next call probes)"


RETRY_POLICY_FIELDS = {
    "max_attempts",
    "attempt_timeout_seconds",
    "deadline_seconds",
    "zero_retention",
}
FAILOVER_POLICY_FIELDS = {
    "failover_on",
    "failover_tries_per_upstream",
    "failover_return_to_primary",
}


class ProjectAdminForm(forms.ModelForm):
    """A project's name and policies, checked as the dashboard checks them (a name no other
    live project of the account has, no more attempts than the plan allows, a deadline of
    one attempt's timeout at least) and saved through its services
    (`save_project_settings`)."""

    class Meta:
        model = Project
        fields = [
            "account",
            "name",
            "max_attempts",
            "attempt_timeout_seconds",
            "deadline_seconds",
            "zero_retention",
            "failover_on",
            "failover_tries_per_upstream",
            "failover_return_to_primary",
        ]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if self.instance.pk is None or "name" not in self.changed_data:
            return name
        try:
            return check_project_rename(project=self.instance, name=name)
        except (NameNotAvailable, Gone) as error:  # Gone: deleted since the page was read
            raise forms.ValidationError(str(error)) from error

    def clean_max_attempts(self) -> int | None:
        max_attempts = self.cleaned_data["max_attempts"]
        limits = limits_for(self.instance.account)
        if max_attempts and max_attempts > limits.max_attempts:
            raise forms.ValidationError(
                f"The {limits.plan_name} plan allows at most {limits.max_attempts} attempts. "
                "Raise the account's plan or its max attempts override first."
            )
        return max_attempts

    def clean(self):
        cleaned = super().clean()
        check_deadline_covers_an_attempt(self)
        return cleaned


def save_project_settings(request, form: ProjectAdminForm) -> None:
    """Each part of the project's form that changed goes through the dashboard's service for
    it: the rename (audited), the retry policy (within the plan's attempts), the failover
    policy (audited; where requests start is reset as the service says)."""
    project = Project.objects.get(pk=form.instance.pk)  # as saved: the services compare
    changed, values = set(form.changed_data), form.cleaned_data
    actor = {"actor": request.user, "ip_address": client_ip(request)}
    if "name" in changed:
        rename_project(project=project, name=values["name"], **actor)
    if changed & RETRY_POLICY_FIELDS:
        update_retry_policy(
            project=project,
            max_attempts=values["max_attempts"],
            attempt_timeout_seconds=values["attempt_timeout_seconds"],
            deadline_seconds=values["deadline_seconds"],
            zero_retention=values["zero_retention"],
        )
    if changed & FAILOVER_POLICY_FIELDS:
        update_failover_policy(
            project=project,
            failover_on=values["failover_on"],
            tries_per_upstream=values["failover_tries_per_upstream"],
            return_to_primary=values["failover_return_to_primary"],
            **actor,
        )


class ProjectAddForm(forms.ModelForm):
    """A new project is its account and name, checked as the dashboard checks them (within
    the plan's project limit, a name the account does not use yet); the rest is set on its
    page once it exists."""

    class Meta:
        model = Project
        fields = ["account", "name"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("account") is None or not cleaned.get("name"):
            return cleaned
        try:
            cleaned["name"] = check_new_project(account=cleaned["account"], name=cleaned["name"])
        except LimitReached as error:
            raise forms.ValidationError(
                f"{error} Raise the account's plan or its projects override first."
            ) from error
        except NameNotAvailable as error:
            self.add_error("name", str(error))
        return cleaned


@admin.register(Project)
class ProjectAdmin(SuspensionActions, admin.ModelAdmin):
    form = ProjectAdminForm
    list_display = [
        "public_id",
        "name",
        "account",
        "created_at",
        "suspended_at",
        "deleted_at",
    ]
    list_filter = [
        ("suspended_at", admin.EmptyFieldListFilter),
        ("deleted_at", admin.EmptyFieldListFilter),
        "zero_retention",
    ]
    list_select_related = ["account"]
    search_fields = [
        "public_id",
        "name",
        "account__public_id",
        "account__name",
        "upstreams__base_url",
    ]
    autocomplete_fields = ["account"]
    readonly_fields = [
        "public_id",
        "created_at",
        "suspended_at",
        "suspension_reason",
        "deleted_at",
    ]
    inlines = [UpstreamInline, ApiKeyInline]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, *account_once_saved(obj)] if obj else []

    # Added as the dashboard adds one (create_project: the plan's limit, its primary upstream,
    # audited); its upstreams and policies are edited on its page once it exists.
    def get_fields(self, request, obj=None):
        return super().get_fields(request, obj) if obj else ["account", "name"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ProjectAddForm
        return super().get_form(request, obj, **kwargs)

    def get_inlines(self, request, obj):
        return self.inlines if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            save_project_settings(request, form)
            return
        created = create_project(
            account=obj.account, name=obj.name, actor=request.user, ip_address=client_ip(request)
        )
        obj.pk = created.pk  # the admin goes on with its own instance: make it the new row
        obj.refresh_from_db()

    subject_keyword = "project"
    suspend_service = staticmethod(suspend_project)
    unsuspend_service = staticmethod(unsuspend_project)

    # Deleted one at a time through the dashboard's service (audited), and only once its
    # requests have all finished: a cascade past the engine would keep their pending slots
    # taken for good. The service marks it deleted; a worker deletes its rows.
    def has_delete_permission(self, request, obj=None):
        return obj is None or (obj.deleted_at is None and unfinished_requests(obj) == 0)

    # A deleted project waits for its purge: nobody changes it any more (the services
    # refuse it, as it is gone for its account).
    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and (
            obj is None or obj.deleted_at is None
        )

    def get_deleted_objects(self, objs, request):
        """The confirmation page names the project alone: Django's list would read every
        request and attempt of it (millions, for a big one) in this request."""
        deleted = [
            f"Project: {project}. Its API keys stop at once; its requests and attempts are "
            "deleted by a worker afterwards, then its upstreams, keys and usage totals."
            for project in objs
        ]
        return deleted, {}, set(), []

    def delete_model(self, request, obj):
        delete_project(project=obj, actor=request.user, ip_address=client_ip(request))

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_formset(self, request, form, formset, change):
        """An upstream's row is saved by the dashboard's service: a new host clears its
        provider key and tells the owners, a new model map is audited."""
        if formset.model is not Upstream:
            super().save_formset(request, form, formset, change)
            return
        formset.save(commit=False)  # what changed, for the admin's history
        for upstream, _ in formset.changed_objects:
            update_upstream(
                upstream=upstream,
                base_url=upstream.base_url,
                model_map=upstream.model_map,
                actor=request.user,
                ip_address=client_ip(request),
            )


@admin.register(ApiKey)
class ApiKeyAdmin(ViewOnly, admin.ModelAdmin):
    """A key is made in the dashboard or by bootstrap_project (shown once, never here), and
    named once there, which keeps names unique among the project's active keys and renames
    none; the admin only revokes it (the action, audited)."""

    list_display = [
        "public_id",
        "name",
        key_prefix,
        "project",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_select_related = ["project", "project__account"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = [
        "public_id",
        "name",
        "prefix",
        "project__public_id",
        "project__account__public_id",
    ]
    exclude = ["secret_sha256"]
    fields = [
        "public_id",
        "name",
        key_prefix,
        "project",
        "created_by",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    readonly_fields = fields
    actions = ["revoke_selected"]

    def has_revoke_permission(self, request) -> bool:
        return request.user.has_perm("projects.change_apikey")

    @admin.action(description="Revoke selected keys", permissions=["revoke"])
    def revoke_selected(self, request, queryset):
        for api_key in queryset.filter(revoked_at__isnull=True):
            revoke_api_key(api_key=api_key, actor=request.user, ip_address=client_ip(request))
        self.message_user(request, "Revoked; requests with those keys now get 401.")


@admin.register(Invitation)
class InvitationAdmin(ViewOnly, admin.ModelAdmin):
    """Sent from the dashboard, within the plan's seats, with its email. Nor saved here: a
    save writes the whole row back as the request read it, undoing an acceptance or a
    withdrawal landing meanwhile. The admin only withdraws (the action)."""

    list_display = [
        "email",
        "account",
        "role",
        "invited_by",
        "created_at",
        "accepted_at",
        "revoked_at",
    ]
    list_select_related = ["account", "invited_by"]
    list_filter = ["role"]
    search_fields = ["email", "public_id", "account__public_id", "account__name"]
    # What the email offered, and whether its link still works, change only through the
    # dashboard's services: a withdrawn invitation cleared by hand would work again.
    fields = [
        "public_id",
        "account",
        "email",
        "role",
        "invited_by",
        "created_at",
        "accepted_at",
        "revoked_at",
    ]
    readonly_fields = fields
    actions = ["withdraw_selected"]

    def has_withdraw_permission(self, request) -> bool:
        return request.user.has_perm("projects.change_invitation")

    @admin.action(description="Withdraw selected invitations", permissions=["withdraw"])
    def withdraw_selected(self, request, queryset):
        pending = queryset.filter(accepted_at__isnull=True, revoked_at__isnull=True)
        for invitation in pending:
            revoke_invitation(
                invitation=invitation, actor=request.user, ip_address=client_ip(request)
            )
        self.message_user(request, "Withdrawn; their links no longer work.")
