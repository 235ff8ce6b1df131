"""State changes for projects (their failover and retry policies, suspension) and ReqRun
API keys. A project's upstreams and provider keys: projects/upstreams.py."""

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import OuterRef, Q, QuerySet
from django.utils import timezone

from accounts.models import Account, User
from accounts.services import record_audit_event, set_suspension
from core.batches import delete_in_batches
from core.leases import Lease
from core.prepared import PreparedGet
from projects.errors import InvalidFailoverPolicy, NameNotAvailable, ProjectBusy
from projects.limits import PLAN_STATE_RELATED, ensure_below, limits_for
from projects.models import FAILOVER_TRIES_MAX, ApiKey, FailoverOn, Project, Upstream
from projects.selectors import unfinished_requests, upstream_has_provider_key
from projects.upstream_guard import validate_upstream_url
from projects.upstreams import DEFAULT_UPSTREAM_URL, PRIMARY_NAME, lock_project

logger = logging.getLogger(__name__)

KEY_PREFIX_BYTES = 6  # 12 hex characters, for lookup and display
KEY_SECRET_BYTES = 24  # 192 bits of entropy
LAST_USED_RESOLUTION = timedelta(minutes=1)
# A deleted project's purge: in batches of this many requests, not before the grace is over
# (an accept that read one of its keys just before the deletion inserts its request within
# it), and under a lease renewed at each batch.
PURGE_BATCH_SIZE = 1000
PURGE_GRACE = timedelta(seconds=5)
PURGE_LEASE = timedelta(minutes=2)


def _available_name(name: str, *, taken: QuerySet, noun: str) -> str:
    name = name.strip()
    if not name:
        raise NameNotAvailable(f"Give the {noun} a name.")
    if taken.filter(name__iexact=name).exists():
        raise NameNotAvailable(f"Another {noun} is already named “{name}”. Choose another name.")
    return name


def check_new_project(*, account: Account, name: str) -> str:
    """The name a new project of `account` would have, once the account's row is locked and
    the plan has room for it; LimitReached or NameNotAvailable otherwise. The lock lasts until
    the caller's transaction ends, so a form may check here first to show a refusal on its
    own field, and `create_project` in the same transaction finds the same answer."""
    Account.objects.select_for_update().get(pk=account.pk)  # serialise the limit and name checks
    limits = limits_for(account)
    projects = account.projects.not_deleted()  # a deleted one's place is free at once
    ensure_below(
        "projects",
        used=projects.count(),
        limit=limits.projects,
        noun="project" if limits.projects == 1 else "projects",
        plan_name=limits.plan_name,
    )
    return _available_name(name, taken=projects, noun="project")


@transaction.atomic
def create_project(
    *,
    account: Account,
    name: str,
    actor: User | None = None,
    upstream_base_url: str = "",
    ip_address: str | None = None,
) -> Project:
    project = Project(account=account, name=check_new_project(account=account, name=name))
    # The default needs no check (and no DNS lookup): it is ours.
    base_url = validate_upstream_url(upstream_base_url) if upstream_base_url else None
    project.save()
    Upstream.objects.create(
        project=project, name=PRIMARY_NAME, position=0, base_url=base_url or DEFAULT_UPSTREAM_URL
    )
    record_audit_event(
        account=account,
        actor=actor,
        action="project_created",
        target=f"{project.public_id} {project.name}",
        ip_address=ip_address,
    )
    return project


def check_project_rename(*, project: Project, name: str) -> str:
    """The name `project` would have, once its row and its account's are locked, if no other
    live project of the account has it (in any case); NameNotAvailable otherwise. As with
    `check_new_project`, the locks last until the caller's transaction ends, so a form may
    check here first and `rename_project` in the same transaction finds the same answer."""
    lock_project(project)  # first, as a deletion of the project takes it before the account
    Account.objects.select_for_update().get(pk=project.account_id)
    others = project.account.projects.not_deleted().exclude(pk=project.pk)
    return _available_name(name, taken=others, noun="project")


@transaction.atomic
def rename_project(
    *, project: Project, name: str, actor: User | None = None, ip_address: str | None = None
) -> Project:
    project.name = check_project_rename(project=project, name=name)
    project.save(update_fields=["name"])
    record_audit_event(
        account=project.account,
        actor=actor,
        action="project_renamed",
        target=f"{project.public_id} {project.name}",
        ip_address=ip_address,
    )
    return project


@transaction.atomic
def delete_project(*, project: Project, actor: User | None = None, ip_address: str | None = None):
    """Delete a project whose requests have all finished: at once for everyone (it is
    marked deleted, so no lookup finds it, and its keys are revoked), its rows later, by
    `purge_deleted_project` in a worker, queued after commit; the privacy sweep queues
    again a purge whose message was lost. Deleting one with requests in flight would take
    their rows past the engine, which alone frees a request's pending slot: the account's
    count would stay taken for good.

    The project's row is locked first: an accept whose insert is committing holds it (the
    request's foreign key), so it is counted below. One that read the key before this
    commits and inserts after it runs as usual; the purge waits for it to finish."""
    lock_project(project)
    unfinished = unfinished_requests(project)
    if unfinished:
        raise ProjectBusy(
            f"{unfinished} of its requests {'has' if unfinished == 1 else 'have'} not "
            "finished (queued, retrying or running). Cancel them on the project's "
            "requests page, or wait for them to end, then delete the project."
        )
    record_audit_event(
        account=project.account,
        actor=actor,
        action="project_deleted",
        target=f"{project.public_id} {project.name}",
        ip_address=ip_address,
    )
    now = timezone.now()
    project.deleted_at = now
    project.save(update_fields=["deleted_at"])
    project.api_keys.filter(revoked_at__isnull=True).update(revoked_at=now)
    transaction.on_commit(lambda: _enqueue_purge(project.pk))


def _enqueue_purge(project_pk: int) -> None:
    from projects.tasks import purge_deleted_project  # the task module imports this one

    purge_deleted_project.delay(project_pk)


def purge_deleted_project(*, project_pk: int, now: datetime | None = None) -> bool:
    """Delete a deleted project's requests (with their attempts) in batches, then the
    project row (with its upstreams, keys and usage totals); True once it is gone. False
    while it must wait: in its first seconds (an accept that read a key just before the
    deletion may still insert), while one of its requests has not finished (such an
    accept's), or while another purge of it runs.

    Safe to run any number of times, concurrently too: a second run finds less, nothing,
    or the other's lease."""
    now = now or timezone.now()
    project = (
        Project.objects.select_related("account")
        .filter(pk=project_pk, deleted_at__isnull=False)
        .first()
    )
    if project is None:
        return True
    if now < project.deleted_at + PURGE_GRACE or unfinished_requests(project):
        return False
    lease = Lease(Project.objects.filter(pk=project.pk), field="purging_until", length=PURGE_LEASE)
    with lease.held() as taken:
        if not taken:
            return False
        requests = delete_project_rows(project, between_batches=lease.renew)
    logger.info(
        "project deleted",
        extra={
            "project_id": project.public_id,
            "account_id": project.account.public_id,
            "deleted_at": project.deleted_at.isoformat(),
            "requests_deleted": requests,
        },
    )
    return True


def delete_project_rows(project: Project, *, between_batches: Callable[[], object]) -> int:
    """Delete the project's requests (with their attempts) in batches, calling
    `between_batches` in each, then its row (with its upstreams, keys and usage totals);
    how many requests went. A project's purge and its account's both delete it so, newest
    request first (the order of the (project, -public_id) index): two of them at once lock
    its requests in the same order, so one waits for the other instead of each holding
    what the other wants next (a deadlock)."""
    requests = delete_in_batches(
        project.requests.order_by("-public_id"),
        batch_size=PURGE_BATCH_SIZE,
        before_delete=lambda batch: between_batches(),
    )
    Project.objects.filter(pk=project.pk).delete()  # upstreams, keys, totals: a few rows
    return requests


def project_deletions_due() -> list[int]:
    """Deleted projects not purged yet, oldest first."""
    return list(
        Project.objects.filter(deleted_at__isnull=False)
        .order_by("deleted_at")
        .values_list("pk", flat=True)[:100]
    )


@transaction.atomic
def update_retry_policy(
    *,
    project: Project,
    max_attempts: int | None,
    attempt_timeout_seconds: int,
    deadline_seconds: int,
    zero_retention: bool,
) -> Project:
    """Save the retry policy; max attempts never exceed the plan's cap."""
    lock_project(project)
    cap = limits_for(project.account).max_attempts
    project.max_attempts = min(max_attempts, cap) if max_attempts else None
    project.attempt_timeout_seconds = attempt_timeout_seconds
    project.deadline_seconds = deadline_seconds
    project.zero_retention = zero_retention
    project.save(
        update_fields=[
            "max_attempts",
            "attempt_timeout_seconds",
            "deadline_seconds",
            "zero_retention",
        ]
    )
    return project


@transaction.atomic
def update_failover_policy(
    *,
    project: Project,
    failover_on: list[str],
    tries_per_upstream: int,
    return_to_primary: bool,
    actor: User | None = None,
    ip_address: str | None = None,
) -> Project:
    """Save which outcomes move a request to the next upstream, how many attempts each
    upstream gets in a round before that, and where requests start. Returning to the
    primary forgets where the last request succeeded; so does switching it off (the next
    success elsewhere is remembered afresh)."""
    unknown = sorted(set(failover_on) - set(FailoverOn.values))
    if unknown:
        raise InvalidFailoverPolicy(f"Unknown failover outcome: {', '.join(unknown)}.")
    if (
        isinstance(tries_per_upstream, bool)
        or not isinstance(tries_per_upstream, int)
        or not 1 <= tries_per_upstream <= FAILOVER_TRIES_MAX
    ):
        raise InvalidFailoverPolicy(
            f"Tries per upstream is a whole number from 1 to {FAILOVER_TRIES_MAX}."
        )
    lock_project(project)
    fields = ["failover_on", "failover_tries_per_upstream", "failover_return_to_primary"]
    if return_to_primary or project.failover_return_to_primary != return_to_primary:
        project.failover_current = ""
        fields.append("failover_current")
    project.failover_on = [value for value in FailoverOn.values if value in failover_on]
    project.failover_tries_per_upstream = tries_per_upstream
    project.failover_return_to_primary = return_to_primary
    project.save(update_fields=fields)
    start = "the primary" if return_to_primary else "where the last request succeeded"
    record_audit_event(
        account=project.account,
        actor=actor,
        action="failover_policy_changed",
        target=f"{project.public_id} on {', '.join(project.failover_on) or 'nothing'}; "
        f"{tries_per_upstream} tries per upstream; start at {start}",
        ip_address=ip_address,
    )
    return project


def suspend_project(
    *, project: Project, reason: str, actor: User | None = None, ip_address: str | None = None
) -> Project:
    set_suspension(
        subject=project, account=project.account, reason=reason, actor=actor, ip_address=ip_address
    )
    return project


def unsuspend_project(
    *, project: Project, actor: User | None = None, ip_address: str | None = None
) -> Project:
    set_suspension(
        subject=project, account=project.account, reason=None, actor=actor, ip_address=ip_address
    )
    return project


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def create_api_key(
    *, project: Project, name: str, actor: User | None = None, ip_address: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its full value, which is never available again."""
    lock_project(project)
    limits = limits_for(project.account)
    limit = limits.api_keys_per_project
    active = project.api_keys.filter(revoked_at__isnull=True).count()
    ensure_below(
        "api_keys_per_project",
        used=active,
        limit=limit,
        plan_name=limits.plan_name,
        noun="active API key per project" if limit == 1 else "active API keys per project",
    )
    name = _available_name(
        name, taken=project.api_keys.filter(revoked_at__isnull=True), noun="API key"
    )  # revoked keys free their name
    prefix = secrets.token_hex(KEY_PREFIX_BYTES)
    secret = secrets.token_hex(KEY_SECRET_BYTES)
    api_key = ApiKey.objects.create(
        project=project,
        name=name,
        prefix=prefix,
        secret_sha256=_digest(secret),
        created_by=actor,
    )
    record_audit_event(
        account=project.account,
        actor=actor,
        action="api_key_created",
        target=f"{api_key.public_id} {api_key.name}",
        ip_address=ip_address,
    )
    return api_key, f"rr_{prefix}_{secret}"


@transaction.atomic
def revoke_api_key(
    *, api_key: ApiKey, actor: User | None = None, ip_address: str | None = None
) -> ApiKey:
    lock_project(api_key.project)  # a second click waits here, then finds the key revoked
    api_key.refresh_from_db(fields=["revoked_at"])
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        record_audit_event(
            account=api_key.project.account,
            actor=actor,
            action="api_key_revoked",
            target=f"{api_key.public_id} {api_key.name}",
            ip_address=ip_address,
        )
    return api_key


def parse_api_key(raw: str) -> tuple[str, str] | None:
    parts = raw.split("_")
    if len(parts) != 3 or parts[0] != "rr" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


# Every /v1 call starts here: the key with its project, account and plan, and whether one
# of the project's enabled upstreams has a provider key (`upstream_has_provider_key`, what
# an accept checks), in one query compiled once (the prefix is unique).
ACTIVE_KEY_BY_PREFIX: PreparedGet[ApiKey] = PreparedGet(
    lambda prefix: (
        ApiKey.objects.select_related(
            "project", "project__account", f"project__account__{PLAN_STATE_RELATED}"
        )
        .annotate(upstream_has_provider_key=upstream_has_provider_key(OuterRef("project_id")))
        .filter(prefix=prefix, revoked_at__isnull=True)
    ),
    prefix="",
)


def authenticate_api_key(raw: str) -> ApiKey | None:
    """The active key for `raw`, or None. Constant-time comparison of the secret's digest."""
    parsed = parse_api_key(raw)
    if parsed is None:
        return None
    prefix, secret = parsed
    try:
        api_key = ACTIVE_KEY_BY_PREFIX.get(prefix=prefix)
    except ApiKey.DoesNotExist:
        return None
    if not hmac.compare_digest(api_key.secret_sha256, _digest(secret)):
        return None
    touch_last_used(api_key)
    return api_key


def touch_last_used(api_key: ApiKey) -> None:
    """Record use at most once a minute per key, so the hot path rarely writes."""
    now = timezone.now()
    if api_key.last_used_at and now - api_key.last_used_at < LAST_USED_RESOLUTION:
        return
    ApiKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION),
        pk=api_key.pk,
    ).update(last_used_at=now)
    api_key.last_used_at = now
