"""Operators see exports and deletions in progress; they never see an export's content (its
chunks have no admin). They close an account only through "Close and delete", the owner's
own deletion path."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.template.response import TemplateResponse

from accounts.access import client_ip
from accounts.models import Account
from core.admin import KeptRecord, ViewOnly
from privacy import deletion
from privacy.models import AccountDeletion, AccountExport


@admin.register(AccountExport)
class AccountExportAdmin(ViewOnly, admin.ModelAdmin):
    list_display = [
        "public_id",
        "account",
        "status",
        "progress",
        "progressed_at",
        "created_at",
        "expires_at",
    ]
    list_filter = ["status"]
    search_fields = ["public_id", "account__public_id", "account__name"]
    list_select_related = ["account"]


@admin.register(AccountDeletion)
class AccountDeletionAdmin(KeptRecord, admin.ModelAdmin):
    """The worker purges a closed account by this row: deleted, the account's data would
    stay for good after its owner deleted it."""

    list_display = ["account", "requested_at", "purge_after"]
    search_fields = ["account__public_id"]
    list_select_related = ["account"]


class CloseAccountForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Recorded in the account's audit log and kept in the admin's history after "
        "the account is gone.",
    )


# accounts/ cannot import this layer, so the action is added here to the Account admin as
# registered so far (accounts' own, which projects extends with the plan inline; privacy
# comes after both in INSTALLED_APPS).
RegisteredAccountAdmin = type(admin.site.get_model_admin(Account))
admin.site.unregister(Account)


@admin.register(Account)
class AccountAdmin(RegisteredAccountAdmin):
    actions = [*RegisteredAccountAdmin.actions, "close_selected"]

    def has_close_permission(self, request) -> bool:
        """The raw delete is gone (accounts/admin.py), but closing deletes the account: it
        takes the permission to delete one."""
        return request.user.has_perm("accounts.delete_account")

    @admin.action(
        description="Close and delete selected… (asks for a reason)", permissions=["close"]
    )
    def close_selected(self, request, queryset):
        form = CloseAccountForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "queryset": queryset,
                "form": form,
                "action": "close_selected",
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "title": "Close and delete",
            }
            return TemplateResponse(request, "privacy/admin/close_accounts.html", context)
        reason = form.cleaned_data["reason"]
        closed = 0
        for account in queryset:
            try:
                deletion.close_account_by_operator(
                    account=account,
                    operator=request.user,
                    reason=reason,
                    ip_address=client_ip(request),
                )
            except deletion.DeletionRefused as error:
                self.message_user(request, f"{account}: {error}", messages.ERROR)
                continue
            self.log_change(request, account, f"Closed for deletion. Reason: {reason}")
            closed += 1
        if closed:
            self.message_user(
                request,
                f"Closed {closed} account(s); their data is deleted once nothing of theirs runs.",
                messages.SUCCESS,
            )
        return None
