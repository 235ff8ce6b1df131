"""State changes for projects, their upstream and provider key, and ReqRun API keys."""

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Account, User
from accounts.services import mail_owners_on_commit, record_audit_event, set_suspension
from core import encryption
from core.prepared import PreparedGet
from projects.limits import PLAN_STATE_RELATED, ensure_below, limits_for
from projects.models import ApiKey, Project
from projects.upstream_guard import validate_upstream_url

logger = logging.getLogger(__name__)

KEY_PREFIX_BYTES = 6  # 12 hex characters, for lookup and display
KEY_SECRET_BYTES = 24  # 192 bits of entropy
LAST_USED_RESOLUTION = timedelta(minutes=1)
PROVIDER_KEY_MIN_LENGTH = 8
DEFAULT_PORTS = {"https": 443, "http": 80}


class InvalidProviderKey(ValueError):
    pass


class NameNotAvailable(ValueError):
    """A project or key name is empty or already taken; the message says which."""


def _available_name(name: str, *, taken: QuerySet, noun: str) -> str:
    name = name.strip()
    if not name:
        raise NameNotAvailable(f"Give the {noun} a name.")
    if taken.filter(name__iexact=name).exists():
        raise NameNotAvailable(f"Another {noun} is already named “{name}”. Choose another name.")
    return name


@transaction.atomic
def create_project(
    *,
    account: Account,
    name: str,
    actor: User | None = None,
    upstream_base_url: str = "",
    ip_address: str | None = None,
) -> Project:
    Account.objects.select_for_update().get(pk=account.pk)  # serialise the limit and name checks
    limits = limits_for(account)
    ensure_below(
        "projects",
        used=account.projects.count(),
        limit=limits.projects,
        noun="project" if limits.projects == 1 else "projects",
        plan_name=limits.plan_name,
    )
    project = Project(
        account=account, name=_available_name(name, taken=account.projects.all(), noun="project")
    )
    if upstream_base_url:
        project.upstream_base_url = validate_upstream_url(upstream_base_url)
    project.save()
    record_audit_event(
        account=account,
        actor=actor,
        action="project_created",
        target=f"{project.public_id} {project.name}",
        ip_address=ip_address,
    )
    return project


@transaction.atomic
def rename_project(
    *, project: Project, name: str, actor: User | None = None, ip_address: str | None = None
) -> Project:
    Account.objects.select_for_update().get(pk=project.account_id)
    others = project.account.projects.exclude(pk=project.pk)
    project.name = _available_name(name, taken=others, noun="project")
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
    record_audit_event(
        account=project.account,
        actor=actor,
        action="project_deleted",
        target=f"{project.public_id} {project.name}",
        ip_address=ip_address,
    )
    project.delete()


def upstream_origin(base_url: str) -> str:
    """Scheme, host and port of a base URL: where the provider key is sent."""
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def record_upstream_move(
    *,
    project: Project,
    old_base_url: str,
    actor: User | None = None,
    ip_address: str | None = None,
) -> bool:
    """Audit a saved change of `project`'s base URL. A new host (scheme, name or port) clears
    the stored provider key, so whoever may edit the upstream cannot have ReqRun send the key
    to a server they control, and the account's owners are told by email. True if it did."""
    old_origin, new_origin = (
        upstream_origin(old_base_url),
        upstream_origin(project.upstream_base_url),
    )
    if old_origin == new_origin:
        record_audit_event(
            account=project.account,
            actor=actor,
            action="upstream_changed",
            target=f"{project.public_id} {project.upstream_base_url}",
            ip_address=ip_address,
        )
        return False
    had_key = project.has_provider_key
    project.provider_key_encrypted = None
    project.provider_key_last4 = ""
    project.save(update_fields=["provider_key_encrypted", "provider_key_last4"])
    record_audit_event(
        account=project.account,
        actor=actor,
        action="upstream_host_changed",
        target=f"{project.public_id} {old_origin} → {new_origin}"
        + (", provider key cleared" if had_key else ""),
        ip_address=ip_address,
    )
    mail_owners_on_commit(
        account=project.account,
        subject=f"Upstream host changed for project {project.name}",
        template="projects/email/upstream_host_changed.txt",
        context={
            "project": project,
            "old_origin": old_origin,
            "new_origin": new_origin,
            "actor": actor,
            "ip_address": ip_address,
            "had_key": had_key,
            "changed_at": timezone.now(),
        },
    )
    logger.info(
        "upstream host changed",
        extra={"project_id": project.public_id, "provider_key_cleared": had_key},
    )
    return True


@transaction.atomic
def update_upstream(
    *,
    project: Project,
    base_url: str,
    max_attempts: int | None,
    attempt_timeout_seconds: int,
    deadline_seconds: int,
    zero_retention: bool,
    provider_key: str = "",
    actor: User | None = None,
    ip_address: str | None = None,
) -> Project:
    """Save the upstream and retry policy; max attempts never exceed the plan's cap. A new
    host clears the stored provider key (`record_upstream_move`); `provider_key`, if given,
    is stored afterwards, so a host change and the key for it can be saved together."""
    base_url = validate_upstream_url(base_url)
    if provider_key:
        provider_key = check_provider_key(provider_key)
    old_base_url = project.upstream_base_url
    project.upstream_base_url = base_url
    cap = limits_for(project.account).max_attempts
    project.max_attempts = min(max_attempts, cap) if max_attempts else None
    project.attempt_timeout_seconds = attempt_timeout_seconds
    project.deadline_seconds = deadline_seconds
    project.zero_retention = zero_retention
    project.save(
        update_fields=[
            "upstream_base_url",
            "max_attempts",
            "attempt_timeout_seconds",
            "deadline_seconds",
            "zero_retention",
        ]
    )
    if base_url != old_base_url:
        record_upstream_move(
            project=project, old_base_url=old_base_url, actor=actor, ip_address=ip_address
        )
    if provider_key:
        set_provider_key(
            project=project, provider_key=provider_key, actor=actor, ip_address=ip_address
        )
    return project


def check_provider_key(provider_key: str) -> str:
    """The key without surrounding space, or InvalidProviderKey saying what is wrong."""
    provider_key = provider_key.strip()
    if len(provider_key) < PROVIDER_KEY_MIN_LENGTH or any(c.isspace() for c in provider_key):
        raise InvalidProviderKey(
            "That does not look like a provider API key: it should be one word of at least "
            f"{PROVIDER_KEY_MIN_LENGTH} characters, such as sk-…"
        )
    return provider_key


def set_provider_key(
    *,
    project: Project,
    provider_key: str,
    actor: User | None = None,
    ip_address: str | None = None,
) -> Project:
    provider_key = check_provider_key(provider_key)
    action = "provider_key_changed" if project.has_provider_key else "provider_key_set"
    project.provider_key_encrypted = encryption.encrypt(provider_key.encode())
    project.provider_key_last4 = provider_key[-4:]
    project.save(update_fields=["provider_key_encrypted", "provider_key_last4"])
    record_audit_event(
        account=project.account,
        actor=actor,
        action=action,
        target=project.public_id,
        ip_address=ip_address,
    )
    return project


def remove_provider_key(
    *, project: Project, actor: User | None = None, ip_address: str | None = None
) -> Project:
    if not project.has_provider_key:
        return project
    project.provider_key_encrypted = None
    project.provider_key_last4 = ""
    project.save(update_fields=["provider_key_encrypted", "provider_key_last4"])
    record_audit_event(
        account=project.account,
        actor=actor,
        action="provider_key_removed",
        target=project.public_id,
        ip_address=ip_address,
    )
    return project


def provider_key_of(project: Project) -> str | None:
    if not project.provider_key_encrypted:
        return None
    return encryption.decrypt(project.provider_key_encrypted).decode()


def rotate_provider_keys(*, batch_size: int = 500) -> int:
    """Re-encrypt every stored provider key under the primary key; returns how many."""
    rotated = encryption.rotate_stored(Project, ["provider_key_encrypted"], batch_size=batch_size)
    logger.info("provider keys rotated", extra={"count": rotated})
    return rotated


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
    Project.objects.select_for_update().get(pk=project.pk)
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


def revoke_api_key(
    *, api_key: ApiKey, actor: User | None = None, ip_address: str | None = None
) -> ApiKey:
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


# Every /v1 call starts here: the key with its project, account and plan in one query,
# compiled once (the prefix is unique).
ACTIVE_KEY_BY_PREFIX: PreparedGet[ApiKey] = PreparedGet(
    lambda prefix: ApiKey.objects.select_related(
        "project", "project__account", f"project__account__{PLAN_STATE_RELATED}"
    ).filter(prefix=prefix, revoked_at__isnull=True),
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
