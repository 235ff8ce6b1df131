"""The admin index opens with when the sweeper and the workers last ran (core.heartbeats)."""

from django.contrib import admin

admin.site.index_template = "core/admin_index.html"


class ViewOnly:
    """A mixin for the admin of rows staff read but never add or save: the product writes
    them (a service, a webhook, a worker), and a save from a form would write the whole row
    back as it was read, undoing a write that landed meanwhile. Say why on each admin."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class KeptRecord(ViewOnly):
    """A mixin for the admin of records that are not deleted there either."""

    def has_delete_permission(self, request, obj=None):
        return False
