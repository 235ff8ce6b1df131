"""Reads for the dashboard, each scoped to the accounts the user is a member of: another
tenant's objects are simply not in these querysets, so looking one up is a 404."""

from django.db.models import (
    Count,
    Exists,
    F,
    OuterRef,
    Q,
    QuerySet,
)
from django.utils import timezone

from accounts.models import Account, Membership, User
from core.prepared import PreparedGet
from projects.models import INVITATION_VALID_FOR, ApiKey, Invitation, Project, Upstream


def projects_visible_to(user: User) -> QuerySet[Project]:
    return (
        Project.objects.not_deleted()
        .filter(account__memberships__user=user)
        .select_related("account")
    )


def api_keys_visible_to(user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(
        project__account__memberships__user=user, project__deleted_at__isnull=True
    ).select_related("project__account", "created_by")


def members_visible_to(user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(
        account__in=Account.objects.filter(memberships__user=user)
    ).select_related("user", "account")


def invitations_visible_to(user: User) -> QuerySet[Invitation]:
    return Invitation.objects.filter(account__memberships__user=user).select_related("account")


def projects_of(account: Account) -> QuerySet[Project]:
    """The account's projects with how many active API keys and upstreams each has."""
    return (
        account.projects.not_deleted()
        .annotate(
            active_keys=Count(
                "api_keys", filter=Q(api_keys__revoked_at__isnull=True), distinct=True
            ),
            upstream_count=Count("upstreams", distinct=True),
            upstream_has_provider_key=upstream_has_provider_key(OuterRef("pk")),
        )
        .order_by("created_at")
    )


# requests_app's ACTIVE_STATUSES, which this app may not import. Asked by status, an index
# (by project and status, or the partial one of active requests) reads only these, never
# the project's finished requests.
UNFINISHED_STATUSES = ("queued", "running", "retrying")


def unfinished_requests(project: Project) -> int:
    """The project's requests still queued, retrying or running."""
    return project.requests.filter(status__in=UNFINISHED_STATUSES).count()


def api_keys_of(project: Project) -> QuerySet[ApiKey]:
    """Active keys first, newest first within each group."""
    return project.api_keys.select_related("created_by").order_by(
        F("revoked_at").desc(nulls_first=True), "-created_at"
    )


def members_of(account: Account) -> QuerySet[Membership]:
    return account.memberships.select_related("user").order_by("created_at")


def open_invitations_of(account: Account) -> QuerySet[Invitation]:
    """Invitations neither accepted nor withdrawn: pending ones and expired ones."""
    return account.invitations.filter(
        accepted_at__isnull=True, revoked_at__isnull=True
    ).select_related("invited_by")


def pending_invitations_of(account: Account) -> QuerySet[Invitation]:
    """Open invitations whose link still works: each holds a seat until accepted."""
    return open_invitations_of(account).filter(created_at__gt=timezone.now() - INVITATION_VALID_FOR)


def upstreams_of(project: Project) -> QuerySet[Upstream]:
    """The project's upstreams in order: the first enabled one is the primary."""
    return project.upstreams.order_by("position", "pk")


def enabled_upstreams(project_id) -> QuerySet[Upstream]:
    """The project's enabled upstreams in the order requests try them: the primary first.
    `project_id` may be a value or an `OuterRef`; every reading of "the primary" is this."""
    return Upstream.objects.filter(project_id=project_id, enabled=True).order_by("position", "pk")


# The project's first enabled upstream, compiled once.
PRIMARY_UPSTREAM: PreparedGet[Upstream] = PreparedGet(
    lambda project_id: enabled_upstreams(project_id)[:1], project_id=0
)


# An upstream with a stored provider key: the engine skips one without (engine/failover.py).
WITH_PROVIDER_KEY = Q(provider_key_encrypted__isnull=False) & ~Q(provider_key_encrypted=b"")


# The first upstream a request can be sent to, compiled once.
FIRST_WITH_PROVIDER_KEY: PreparedGet[Upstream] = PreparedGet(
    lambda project_id: enabled_upstreams(project_id).filter(WITH_PROVIDER_KEY)[:1], project_id=0
)


def first_upstream_with_provider_key(project: Project) -> Upstream | None:
    """The project's first enabled upstream that has a provider key: the primary unless it
    has none (the engine skips it then), or None."""
    return _upstream_of(project, FIRST_WITH_PROVIDER_KEY)


def upstream_has_provider_key(project_ref: OuterRef) -> Exists:
    """Whether one of the project's enabled upstreams has a provider key, as an expression for
    another query of the project: without one none of its requests can run; with one, they
    run there even when the primary has none. The accept path learns it in the API key's own
    query instead of one of its own."""
    return Exists(enabled_upstreams(project_ref).filter(WITH_PROVIDER_KEY))


def primary_upstream(project: Project) -> Upstream | None:
    """Where the project's requests go: its first enabled upstream by position, or None."""
    return _upstream_of(project, PRIMARY_UPSTREAM)


def _upstream_of(project: Project, lookup: PreparedGet[Upstream]) -> Upstream | None:
    try:
        upstream = lookup.get(project_id=project.pk)
    except Upstream.DoesNotExist:
        return None
    upstream.project = project  # already loaded by the caller
    return upstream


def has_provider_key(project: Project) -> bool:
    """Whether one of the project's enabled upstreams has a provider key: without one, none of
    its requests can run."""
    return first_upstream_with_provider_key(project) is not None
