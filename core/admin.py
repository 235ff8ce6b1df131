"""The admin index opens with when the sweeper and the workers last ran (core.heartbeats)."""

from django.contrib import admin

admin.site.index_template = "core/admin_index.html"
