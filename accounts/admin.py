"""Operators' admin for users, accounts and the audit trail, the
suspension actions (with a reason, audited) shared with projects, and the admin's door:
allauth's rate-limited sign-in plus a second factor passed in this session."""

from collections.abc import Callable
from functools import wraps

from allauth.account.admin import EmailAddressAdmin as AllauthEmailAddressAdmin
from allauth.account.authentication import get_authentication_records
from allauth.account.models import EmailAddress
from allauth.mfa.admin import AuthenticatorAdmin as AllauthAuthenticatorAdmin
from allauth.mfa.models import Authenticator
from allauth.mfa.utils import is_mfa_enabled
from allauth.usersessions.adapter import get_adapter as get_usersessions_adapter
from allauth.usersessions.admin import UserSessionAdmin
from allauth.usersessions.models import UserSession
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache

from accounts.access import client_ip
from accounts.models import Account, AuditEvent, Membership, User
from accounts.services import (
    end_sessions,
    remove_second_factor,
    rename_account,
    suspend_account,
    unsuspend_account,
)
from core.admin import KeptRecord, ViewOnly


class SuspensionForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Shown to the customer in the dashboard banner and recorded in the audit log.",
    )


class SuspensionActions:
    """Admin actions "Suspend…" (asks for a reason) and "Lift suspension", both audited, for
    staff who may change the subject (Django offers an action to anyone who can view the list
    unless it names the permissions it needs).

    Subclasses name the services and the keyword they take the subject by.
    """

    subject_keyword: str
    suspend_service: Callable[..., object]
    unsuspend_service: Callable[..., object]
    actions = ["suspend_selected", "unsuspend_selected"]

    @admin.action(description="Suspend selected… (asks for a reason)", permissions=["change"])
    def suspend_selected(self, request, queryset):
        form = SuspensionForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for subject in queryset:
                self.suspend_service(
                    **{self.subject_keyword: subject},
                    reason=form.cleaned_data["reason"],
                    actor=request.user,
                    ip_address=client_ip(request),
                )
            self.message_user(request, f"Suspended {queryset.count()}.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "queryset": queryset,
            "form": form,
            "action": "suspend_selected",
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "title": "Suspend",
        }
        return TemplateResponse(request, "accounts/admin/suspend.html", context)

    @admin.action(description="Lift the suspension of selected", permissions=["change"])
    def unsuspend_selected(self, request, queryset):
        for subject in queryset:
            self.unsuspend_service(
                **{self.subject_keyword: subject},
                actor=request.user,
                ip_address=client_ip(request),
            )
        self.message_user(
            request, f"Lifted the suspension of {queryset.count()}.", messages.SUCCESS
        )


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_active", "is_staff", "date_joined"]
    search_fields = ["email"]
    fieldsets = [
        (
            None,
            {
                "fields": ["email", "password"],
                "description": "The user changes their email on their own Email page "
                "(/accounts/email/): the new address is verified first and becomes the one "
                "they sign in and reset their password with. Changed here, the old address "
                "would still do both.",
            },
        ),
        ("Status", {"fields": ["is_active", "is_staff", "is_superuser", "welcomed_at"]}),
        ("Permissions", {"fields": ["groups", "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]

    # allauth signs in and resets passwords by the user's addresses (EmailAddress), which
    # a new email typed here would leave behind. The welcome is sent once, claimed by
    # setting welcomed_at: cleared, it would go out again at the next verification.
    def get_readonly_fields(self, request, obj=None):
        return ["email", "welcomed_at"] if obj else []

    # Only what the operator changed is saved: the rest of the row, written back as this
    # request read it, would undo what the user's own pages changed meanwhile (a new
    # password, the email their Email page moved, the welcome claimed and sent).
    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
            return
        columns = {field.name for field in User._meta.concrete_fields}
        changed = [name for name in form.changed_data if name in columns]
        if changed:
            obj.save(update_fields=changed)

    def get_deleted_objects(self, objs, request):
        """An account's only owner is not deleted (here, or with the bulk action, which asks
        this too): the account would be left with nobody to manage, export or delete it,
        its keys working and its subscription billed. The page names it, to be closed first
        (its "Close and delete" action) or given another owner."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        users = [user.pk for user in objs]
        owners = Membership.objects.filter(role=Membership.Role.OWNER)
        left_without_owner = Account.objects.filter(
            memberships__in=owners.filter(user__in=users)
        ).exclude(memberships__in=owners.exclude(user__in=users))
        ownerless = [
            f"Account {account}: this would leave it without an owner. Close it first, or "
            "make another member an owner."
            for account in left_without_owner.distinct().order_by("pk")
        ]
        if ownerless:
            # The last owner's membership may not be deleted (its admin says so), which Django
            # would report as a permission lacking and show instead of the reason above.
            perms_needed = perms_needed - {Membership._meta.verbose_name}
        # Members do not change while an owner's deletion of the account is at Paddle.
        closing = [
            f"Account {account}: it is being deleted just now. Try again in a minute."
            for account in Account.objects.filter(memberships__user__in=users)
            .distinct()
            .order_by("pk")
            if account.is_closing
        ]
        return deleted, counts, perms_needed, [*protected, *ownerless, *closing]

    # The sessions of a deleted login go with it: each keeps the email it signed in with.
    def delete_model(self, request, obj):
        end_sessions(user=obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for user in queryset:
            end_sessions(user=user)
        super().delete_queryset(request, queryset)


class MembershipInline(admin.TabularInline):
    """Who belongs to the account; a role changes, or a member is removed, on the
    membership's own page, through the dashboard's rules (projects/admin.py)."""

    model = Membership
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ["user", "role", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False  # members join by invitation, within the plan's seats


@admin.register(Account)
class AccountAdmin(SuspensionActions, admin.ModelAdmin):
    list_display = ["public_id", "name", "created_at", "suspended_at"]
    list_filter = [("suspended_at", admin.EmptyFieldListFilter)]
    search_fields = ["public_id", "name", "memberships__user__email"]
    # Suspension changes only through the actions, so each one is audited with a reason.
    # closing_since is the deletion's own lock while Paddle answers (privacy.deletion): set
    # here it would hold membership changes for nothing, cleared it would let them run in
    # the middle of a deletion.
    readonly_fields = [
        "public_id",
        "created_at",
        "suspended_at",
        "suspension_reason",
        "closing_since",
    ]
    inlines = [MembershipInline]

    subject_keyword = "account"
    suspend_service = staticmethod(suspend_account)
    unsuspend_service = staticmethod(unsuspend_account)

    # An account is made at sign-up, or by bootstrap_project, with its owner: one added here
    # would have none, and nobody could ever sign in to it.
    def has_add_permission(self, request):
        return False

    # A rename is audited, as every change owners see in their security log. The rest of the
    # row is read-only here: saved whole, it would be written back as this request read it,
    # undoing a suspension or a deletion's closing mark set meanwhile.
    def save_model(self, request, obj, form, change):
        if "name" in form.changed_data:
            rename_account(
                account=obj,
                name=form.cleaned_data["name"],
                actor=request.user,
                ip_address=client_ip(request),
            )

    # A raw delete would leave a live Paddle subscription and running requests behind: an
    # account is deleted only through privacy's "Close and delete" action, as its owner would.
    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


@admin.register(AuditEvent)
class AuditEventAdmin(KeptRecord, admin.ModelAdmin):
    """The trail is evidence: operators read it, nobody edits or deletes it."""

    list_display = ["created_at", "account", "actor", "action", "target", "ip_address"]
    search_fields = ["account__public_id", "actor__email", "action", "target"]
    list_filter = ["action"]
    list_select_related = ["account", "actor"]


# Recovery codes alone are not a second factor: allauth deletes them with the last one.
SECOND_FACTORS = [Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN]


def passed_second_factor(request) -> bool:
    """Whether this session's sign-in (or a later re-authentication) included a code."""
    records = get_authentication_records(request, request.user)
    return any(record.get("method") == "mfa" for record in records)


def operator_may_enter(request) -> bool:
    """The admin opens for active staff who have a second factor and passed it in this
    session; a session that merely has a staff user in it (a password alone, a session
    from before the authenticator was added) does not open it."""
    user = request.user
    return (
        user.is_active
        and user.is_staff
        and is_mfa_enabled(user, SECOND_FACTORS)
        and passed_second_factor(request)
    )


@never_cache
def operator_login(request, extra_context=None):
    """The admin has no password form of its own: everyone signs in through allauth
    (rate-limited, verified email, the second-factor step), then comes back here."""
    next_url = request.GET.get(REDIRECT_FIELD_NAME, "")
    if not url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        next_url = reverse("admin:index")
    user = request.user
    if not user.is_authenticated:
        return redirect_to_login(next_url, reverse("account_login"))
    if not (user.is_active and user.is_staff):
        reason = "The admin is for ReqRun's operators."
        return render(request, "accounts/forbidden.html", {"reason": reason}, status=403)
    if not is_mfa_enabled(user, SECOND_FACTORS):
        messages.warning(
            request,
            "The admin needs two-factor sign-in. Set up an authenticator app, "
            "then open the admin again.",
        )
        return redirect("mfa_activate_totp")
    if not passed_second_factor(request):
        return redirect_to_login(next_url, reverse("mfa_reauthenticate"))
    return redirect(next_url)


# Every admin view checks site.has_permission and sends refusals to site.login.
admin.site.has_permission = operator_may_enter
admin.site.login = operator_login


def _are_primary_keys(field, values: list[str]) -> bool:
    try:
        for value in values:
            field.to_python(value)
    except ValidationError:
        return False
    return True


def _refusing_unreadable_input(admin_view):
    """site.admin_view, which wraps every admin page: a list filter's value goes into a
    query as given, and PostgreSQL cannot compare text holding a NUL; the rows an action
    runs on are filtered by the posted ids as given, and one that is not a key raises."""

    @wraps(admin_view)
    def wrap(view, cacheable=False):
        guarded = admin_view(view, cacheable)
        model_admin = getattr(view, "__self__", None)
        model = model_admin.model if isinstance(model_admin, admin.ModelAdmin) else None

        @wraps(guarded)
        def inner(request, *args, **kwargs):
            if any("\x00" in value for _, values in request.GET.lists() for value in values):
                return HttpResponseBadRequest("A query value holds a NUL character.")
            if (
                model is not None
                and request.method == "POST"
                and not _are_primary_keys(
                    model._meta.pk, request.POST.getlist(ACTION_CHECKBOX_NAME)
                )
            ):
                return HttpResponseBadRequest("A selected row's id is not a valid id.")
            return guarded(request, *args, **kwargs)

        return inner

    return wrap


admin.site.admin_view = _refusing_unreadable_input(admin.site.admin_view)

# allauth's own admin edits a user's addresses freely: one changed, made primary or moved to
# another user there would part from User.email, which the user's Email page keeps in step.
# Here they are read, and not saved either (a save writes the whole row back as the request
# read it, undoing the user's own change landing meanwhile); an operator who may change
# them marks one verified.
admin.site.unregister(EmailAddress)


@admin.register(EmailAddress)
class EmailAddressAdmin(ViewOnly, AllauthEmailAddressAdmin):
    def has_verify_permission(self, request) -> bool:
        return request.user.has_perm("account.change_emailaddress")

    @admin.action(description="Mark selected email addresses as verified", permissions=["verify"])
    def make_verified(self, request, queryset):
        super().make_verified(request, queryset)


# allauth searches sessions by user__username; ReqRun's users have an email instead. Its
# admin also adds, edits and deletes the rows by which a user's sessions are found and
# ended (a second factor turned on or removed, a login deleted): one moved to another user,
# or deleted while its browser stays signed in, would outlive those. Here they are read,
# and deleting one ends the session itself, signing its browser out.
admin.site.unregister(UserSession)


@admin.register(UserSession)
class SessionAdmin(ViewOnly, UserSessionAdmin):
    search_fields = ["user__email", "ip"]

    def delete_model(self, request, obj):
        get_usersessions_adapter().end_sessions([obj])

    def delete_queryset(self, request, queryset):
        get_usersessions_adapter().end_sessions(queryset)


# allauth's own admin shows an authenticator's data (the app's secret, the recovery codes'
# seed) and edits it, and adds one or moves it to another user: a second factor its user
# never set up. Here they are read; staff who may delete one remove it for a user who lost
# their phone, through the service that audits it, signs the user out and emails them.
admin.site.unregister(Authenticator)


@admin.register(Authenticator)
class AuthenticatorAdmin(ViewOnly, AllauthAuthenticatorAdmin):
    search_fields = ["user__email"]
    list_select_related = ["user"]
    fields = ["user", "type", "created_at", "last_used_at"]
    readonly_fields = fields

    def delete_model(self, request, obj):
        remove_second_factor(authenticator=obj, actor=request.user, ip_address=client_ip(request))

    def delete_queryset(self, request, queryset):
        # Apps and keys first: the last one takes the user's recovery codes with it, so an
        # app selected with its codes is one removal, and one email to the user.
        selected = queryset.select_related("user")
        for authenticator in sorted(
            selected, key=lambda each: each.type == Authenticator.Type.RECOVERY_CODES
        ):
            remove_second_factor(
                authenticator=authenticator, actor=request.user, ip_address=client_ip(request)
            )
