"""Operators see exports and deletions in progress; they never see an export's content."""

from django.contrib import admin

from privacy.models import AccountDeletion, AccountExport


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AccountExport)
class AccountExportAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "account", "status", "progress", "created_at", "expires_at"]
    list_filter = ["status"]
    search_fields = ["public_id", "account__public_id", "account__name"]
    list_select_related = ["account"]
    exclude = ["content"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("content")


@admin.register(AccountDeletion)
class AccountDeletionAdmin(ReadOnlyAdmin):
    list_display = ["account", "requested_at", "purge_after"]
    search_fields = ["account__public_id"]
    list_select_related = ["account"]
