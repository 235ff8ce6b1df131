"""Dashboard URLs under /app/ for projects and their upstreams, API keys, members and
invitations."""

from django.urls import path

from projects.views import api_keys, members, projects, upstreams

urlpatterns = [
    path("", projects.dashboard, name="dashboard"),
    path("projects/", projects.project_list, name="project-list"),
    path("projects/<pid:project_id>/", projects.project_detail, name="project-detail"),
    path("projects/<pid:project_id>/rename", projects.project_rename, name="project-rename"),
    path("projects/<pid:project_id>/policy", projects.project_policy, name="project-policy"),
    path("projects/<pid:project_id>/failover", projects.project_failover, name="project-failover"),
    path("projects/<pid:project_id>/upstreams/", upstreams.upstream_add, name="upstream-add"),
    path(
        "projects/<pid:project_id>/upstreams/<slug:upstream_name>/",
        upstreams.upstream_edit,
        name="upstream-edit",
    ),
    path(
        "projects/<pid:project_id>/upstreams/<slug:upstream_name>/key/remove",
        upstreams.provider_key_remove,
        name="provider-key-remove",
    ),
    path(
        "projects/<pid:project_id>/upstreams/<slug:upstream_name>/move",
        upstreams.upstream_move,
        name="upstream-move",
    ),
    path(
        "projects/<pid:project_id>/upstreams/<slug:upstream_name>/enabled",
        upstreams.upstream_enabled,
        name="upstream-enabled",
    ),
    path(
        "projects/<pid:project_id>/upstreams/<slug:upstream_name>/remove",
        upstreams.upstream_remove,
        name="upstream-remove",
    ),
    path("projects/<pid:project_id>/delete", projects.project_delete, name="project-delete"),
    path("projects/<pid:project_id>/keys/", api_keys.api_key_list, name="api-key-list"),
    path(
        "projects/<pid:project_id>/keys/<pid:key_id>/revoke",
        api_keys.api_key_revoke,
        name="api-key-revoke",
    ),
    path("members/", members.member_list, name="member-list"),
    path("members/invite", members.member_invite, name="member-invite"),
    path("members/role", members.member_role, name="member-role"),
    path("members/remove", members.member_remove, name="member-remove"),
    path("members/leave", members.member_leave, name="member-leave"),
    path(
        "members/invitations/<pid:invitation_id>/withdraw",
        members.invitation_revoke,
        name="invitation-revoke",
    ),
    path("invitations/<str:token>/", members.invitation_accept, name="invitation-accept"),
]
