"""A project's upstreams: add, edit, reorder, enable, disable and remove them, and their
provider keys (encrypted with the key ring, shown by their last four characters).

Every change is audited. The engine routes attempts across them (requests_app/engine/
failover.py); docs/upstreams.md has the rules these functions keep.
"""

import logging
import re
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from accounts.emails import send_or_retry_on_commit
from accounts.models import User
from accounts.services import email_owners, record_audit_event
from core import encryption
from projects.errors import (
    Gone,
    InvalidModelMap,
    InvalidProviderKey,
    NameNotAvailable,
    UpstreamRefused,
)
from projects.limits import ensure_below, limits_for
from projects.models import Project, Upstream, UpstreamMove
from projects.selectors import primary_upstream
from projects.upstream_guard import validate_upstream_url

logger = logging.getLogger(__name__)

DEFAULT_UPSTREAM_URL = settings.REQRUN_DEFAULT_UPSTREAM_URL
PRIMARY_NAME = "primary"
PROVIDER_KEY_MIN_LENGTH = 8
DEFAULT_PORTS = {"https": 443, "http": 80}
UPSTREAM_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
UPSTREAM_NAME_MAX_LENGTH = 40
MODEL_MAP_MAX_ENTRIES = 100


def lock_project(project: Project) -> None:
    """Take the project's row lock, under which its settings, upstreams and API keys change
    one at a time. Gone if the project was deleted while this waited (another admin, or the
    first click of a double click on Delete)."""
    if not Project.objects.not_deleted().select_for_update().filter(pk=project.pk).exists():
        raise Gone(f"The project “{project.name}” was deleted.")


def lock_upstream(upstream: Upstream) -> None:
    """The project's row lock, and the upstream read again under it: Gone if it was removed
    meanwhile (the first click of a double click on Remove)."""
    lock_project(upstream.project)
    try:
        upstream.refresh_from_db()
    except Upstream.DoesNotExist:
        raise Gone(f"The upstream “{upstream.name}” was removed.") from None


def upstream_origin(base_url: str) -> str:
    """Scheme, host and port of a base URL: where the provider key is sent."""
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def _upstream_target(upstream: Upstream, detail: str = "") -> str:
    return f"{upstream.project.public_id} {upstream.name}" + (f" {detail}" if detail else "")


# A closed breaker with nothing counted (requests_app/engine/breaker.py).
CLOSED_BREAKER = {
    "breaker_failures": 0,
    "breaker_window_started": None,
    "breaker_opened_at": None,
    "breaker_open_until": None,
    "breaker_probe_until": None,
}


def _close_breaker(
    upstream: Upstream, *, why: str, actor: User | None, ip_address: str | None
) -> None:
    """Forget `upstream`'s breaker: it judged the old provider key at the old base URL, and a
    new one of either is not skipped for their failures. Read under the project's lock.
    Audited and logged like the engine's own changes of state."""
    if upstream.breaker_open_until is None and not upstream.breaker_failures:
        return  # closed, nothing counted: no write
    was_open = upstream.breaker_open_until is not None
    for field, value in CLOSED_BREAKER.items():
        setattr(upstream, field, value)
    upstream.save(update_fields=list(CLOSED_BREAKER))
    if not was_open:
        return
    record_audit_event(
        account=upstream.project.account,
        actor=actor,
        action="upstream_breaker_closed",
        target=f"{_upstream_target(upstream)}: {why}",
        ip_address=ip_address,
    )
    logger.warning(
        "upstream breaker changed",
        extra={
            "project_id": upstream.project.public_id,
            "upstream": upstream.name,
            "breaker": "closed",
        },
    )


def record_upstream_move(
    *,
    upstream: Upstream,
    old_base_url: str,
    actor: User | None = None,
    ip_address: str | None = None,
) -> bool:
    """Audit a saved change of `upstream`'s base URL, and close its breaker. A new host
    (scheme, name or port) clears its stored provider key, so whoever may edit upstreams
    cannot have ReqRun send the key to a server they control, and the account's owners are
    told by email (an email the mail server refuses is retried by a task). True if it did."""
    project = upstream.project
    _close_breaker(upstream, why="its base URL changed", actor=actor, ip_address=ip_address)
    old_origin, new_origin = upstream_origin(old_base_url), upstream_origin(upstream.base_url)
    if old_origin == new_origin:
        record_audit_event(
            account=project.account,
            actor=actor,
            action="upstream_changed",
            target=_upstream_target(upstream, upstream.base_url),
            ip_address=ip_address,
        )
        return False
    had_key = upstream.has_provider_key
    upstream.provider_key_encrypted = None
    upstream.provider_key_last4 = ""
    upstream.save(update_fields=["provider_key_encrypted", "provider_key_last4"])
    audit_event = record_audit_event(
        account=project.account,
        actor=actor,
        action="upstream_host_changed",
        target=_upstream_target(upstream, f"{old_origin} → {new_origin}")
        + (", provider key cleared" if had_key else ""),
        ip_address=ip_address,
    )
    move = UpstreamMove.objects.create(
        upstream=upstream,
        audit_event=audit_event,
        old_origin=old_origin,
        new_origin=new_origin,
        provider_key_cleared=had_key,
    )
    from projects import tasks  # the task module imports this one

    send_or_retry_on_commit(
        lambda: email_owners_about_move(move_pk=move.pk),
        task=tasks.email_owners_about_upstream_move,
        ids=(move.pk,),
    )
    logger.info(
        "upstream host changed",
        extra={"project_id": project.public_id, "provider_key_cleared": had_key},
    )
    return True


def email_owners_about_move(*, move_pk: int, owner_ids: list[int] | None = None) -> None:
    """Tell the account's owners (those of `owner_ids`, for a retry) an upstream now points
    at another host; raises MAIL_ERRORS when the mail server refuses it (`email_owners`).
    Nothing if the upstream has been removed since."""
    move = (
        UpstreamMove.objects.select_related("upstream__project__account", "audit_event__actor")
        .filter(pk=move_pk)
        .first()
    )
    if move is None:
        return
    upstream, event = move.upstream, move.audit_event
    email_owners(
        account=upstream.project.account,
        subject=f"Upstream host changed for project {upstream.project.name}",
        template="projects/email/upstream_host_changed.txt",
        context={
            "project": upstream.project,
            "upstream": upstream,
            "old_origin": move.old_origin,
            "new_origin": move.new_origin,
            "actor": event.actor,
            "ip_address": event.ip_address,
            "had_key": move.provider_key_cleared,
            "changed_at": event.created_at,
        },
        owner_ids=owner_ids,
    )


def check_provider_key(provider_key: str) -> str:
    """The key without surrounding space, or InvalidProviderKey saying what is wrong."""
    provider_key = provider_key.strip()
    if len(provider_key) < PROVIDER_KEY_MIN_LENGTH or any(c.isspace() for c in provider_key):
        raise InvalidProviderKey(
            "That does not look like a provider API key: it should be one word of at least "
            f"{PROVIDER_KEY_MIN_LENGTH} characters, such as sk-…"
        )
    if not all("!" <= c <= "~" for c in provider_key):  # sent in an HTTP header as ASCII
        raise InvalidProviderKey(
            "A provider API key holds only letters, digits and punctuation (ASCII); this one "
            "has another character. Copy it again from your provider's dashboard."
        )
    return provider_key


def _shown(name: str) -> str:
    """A model name fit to show in an error: what cannot be printed becomes U+FFFD."""
    return "".join(c if c.isprintable() else "\ufffd" for c in name)


def check_model_map(model_map: dict) -> dict[str, str]:
    """The map with names stripped, or InvalidModelMap: pairs of non-empty model names."""
    if not isinstance(model_map, dict):
        raise InvalidModelMap("The model map must pair model names: source → destination.")
    if len(model_map) > MODEL_MAP_MAX_ENTRIES:
        raise InvalidModelMap(f"A model map holds at most {MODEL_MAP_MAX_ENTRIES} pairs.")
    checked = {}
    for source, destination in model_map.items():
        if not isinstance(source, str) or not isinstance(destination, str):
            raise InvalidModelMap("Model names in the map must be text.")
        source, destination = source.strip(), destination.strip()
        if not source or not destination:
            raise InvalidModelMap("Each pair in the model map needs two non-empty model names.")
        if not all(c.isprintable() and not c.isspace() for c in source + destination):
            raise InvalidModelMap(
                "Model names hold no spaces or control characters: "
                f"“{_shown(source)}={_shown(destination)}”."
            )
        checked[source] = destination
    return checked


def _upstream_name(name: str, *, project: Project, exclude: Upstream | None = None) -> str:
    taken = project.upstreams.exclude(pk=exclude.pk) if exclude else project.upstreams.all()
    names = set(taken.values_list("name", flat=True))
    name = name.strip().lower()
    if not name:
        if not names:
            return PRIMARY_NAME
        number = 1
        while f"fallback-{number}" in names:
            number += 1
        return f"fallback-{number}"
    if len(name) > UPSTREAM_NAME_MAX_LENGTH or not UPSTREAM_NAME.fullmatch(name):
        raise NameNotAvailable(
            "An upstream name is lowercase letters, digits and dashes, such as “fallback-1”, "
            f"at most {UPSTREAM_NAME_MAX_LENGTH} characters."
        )
    if name in names:
        raise NameNotAvailable(f"Another upstream is already named “{name}”. Choose another name.")
    return name


def _next_position(project: Project) -> int:
    last = project.upstreams.aggregate(last=Max("position"))["last"]
    return 0 if last is None else last + 1


def _store_key(upstream: Upstream, provider_key: str) -> None:
    upstream.provider_key_encrypted = encryption.encrypt(provider_key.encode())
    upstream.provider_key_last4 = provider_key[-4:]


@transaction.atomic
def add_upstream(
    *,
    project: Project,
    base_url: str,
    provider_key: str = "",
    name: str = "",
    model_map: dict | None = None,
    actor: User | None = None,
    ip_address: str | None = None,
) -> Upstream:
    """Append an upstream after the others (the first one is the primary), within the plan's
    cap. Nothing is saved if any part of the input is refused."""
    lock_project(project)  # serialise the cap and name checks
    limits = limits_for(project.account)
    limit = limits.upstreams_per_project
    ensure_below(
        "upstreams_per_project",
        used=project.upstreams.count(),
        limit=limit,
        plan_name=limits.plan_name,
        noun="upstream per project" if limit == 1 else "upstreams per project",
    )
    upstream = Upstream(
        project=project,
        name=_upstream_name(name, project=project),
        base_url=validate_upstream_url(base_url),
        model_map=check_model_map(model_map or {}),
        position=_next_position(project),
    )
    if provider_key:
        _store_key(upstream, check_provider_key(provider_key))
    upstream.save()
    record_audit_event(
        account=project.account,
        actor=actor,
        action="upstream_added",
        target=_upstream_target(upstream, upstream.base_url),
        ip_address=ip_address,
    )
    return upstream


@transaction.atomic
def update_upstream(
    *,
    upstream: Upstream,
    base_url: str,
    model_map: dict | None = None,
    provider_key: str = "",
    actor: User | None = None,
    ip_address: str | None = None,
) -> Upstream:
    """Save an upstream's base URL and model map (None keeps the map). A new host clears the
    stored provider key (`record_upstream_move`); `provider_key`, if given, is stored
    afterwards, so a host change and the key for it can be saved together."""
    base_url = validate_upstream_url(base_url)  # may look the host up: before the lock
    if provider_key:
        provider_key = check_provider_key(provider_key)
    lock_upstream(upstream)
    new_map = upstream.model_map if model_map is None else check_model_map(model_map)
    old_base_url, old_map = upstream.base_url, upstream.model_map
    upstream.base_url, upstream.model_map = base_url, new_map
    upstream.save(update_fields=["base_url", "model_map"])
    if base_url != old_base_url:
        record_upstream_move(
            upstream=upstream, old_base_url=old_base_url, actor=actor, ip_address=ip_address
        )
    elif new_map != old_map:
        record_audit_event(
            account=upstream.project.account,
            actor=actor,
            action="upstream_changed",
            target=_upstream_target(upstream, "model map"),
            ip_address=ip_address,
        )
    if provider_key:
        set_upstream_key(
            upstream=upstream, provider_key=provider_key, actor=actor, ip_address=ip_address
        )
    return upstream


@transaction.atomic
def set_upstream_key(
    *,
    upstream: Upstream,
    provider_key: str,
    actor: User | None = None,
    ip_address: str | None = None,
) -> Upstream:
    provider_key = check_provider_key(provider_key)
    lock_upstream(upstream)
    action = "provider_key_changed" if upstream.has_provider_key else "provider_key_set"
    _store_key(upstream, provider_key)
    upstream.save(update_fields=["provider_key_encrypted", "provider_key_last4"])
    record_audit_event(
        account=upstream.project.account,
        actor=actor,
        action=action,
        target=_upstream_target(upstream),
        ip_address=ip_address,
    )
    _close_breaker(upstream, why="its provider key changed", actor=actor, ip_address=ip_address)
    return upstream


@transaction.atomic
def remove_upstream_key(
    *, upstream: Upstream, actor: User | None = None, ip_address: str | None = None
) -> Upstream:
    lock_upstream(upstream)
    if not upstream.has_provider_key:
        return upstream
    upstream.provider_key_encrypted = None
    upstream.provider_key_last4 = ""
    upstream.save(update_fields=["provider_key_encrypted", "provider_key_last4"])
    record_audit_event(
        account=upstream.project.account,
        actor=actor,
        action="provider_key_removed",
        target=_upstream_target(upstream),
        ip_address=ip_address,
    )
    return upstream


def set_provider_key(
    *,
    project: Project,
    provider_key: str,
    actor: User | None = None,
    ip_address: str | None = None,
) -> Project:
    """Set the key of the project's primary, its first enabled upstream (made, at the
    default URL, if there is none): the one-upstream shape of set-up scripts and tests."""
    upstream = project.upstreams.filter(enabled=True).order_by("position", "pk").first()
    if upstream is None:
        upstream = Upstream.objects.create(
            project=project, name=PRIMARY_NAME, position=0, base_url=DEFAULT_UPSTREAM_URL
        )
    set_upstream_key(
        upstream=upstream, provider_key=provider_key, actor=actor, ip_address=ip_address
    )
    return project


@transaction.atomic
def reorder_upstreams(
    *,
    project: Project,
    names: list[str],
    actor: User | None = None,
    ip_address: str | None = None,
) -> list[Upstream]:
    """Put the project's upstreams in the order of `names`, which must name each once."""
    lock_project(project)
    upstreams = {upstream.name: upstream for upstream in project.upstreams.all()}
    if sorted(names) != sorted(upstreams):
        raise UpstreamRefused("Name every upstream of the project once to reorder them.")
    ordered = [upstreams[name] for name in names]
    for position, upstream in enumerate(ordered):
        upstream.position = position
    Upstream.objects.bulk_update(ordered, ["position"])
    record_audit_event(
        account=project.account,
        actor=actor,
        action="upstreams_reordered",
        target=f"{project.public_id} {', '.join(names)}",
        ip_address=ip_address,
    )
    return ordered


@transaction.atomic
def move_upstream(
    *, upstream: Upstream, offset: int, actor: User | None = None, ip_address: str | None = None
) -> list[Upstream]:
    """Move an upstream `offset` places (-1: up, towards primary); at an end, it stays."""
    lock_upstream(upstream)
    names = list(
        upstream.project.upstreams.order_by("position", "pk").values_list("name", flat=True)
    )
    index = names.index(upstream.name)
    target = min(max(index + offset, 0), len(names) - 1)
    names.insert(target, names.pop(index))
    return reorder_upstreams(
        project=upstream.project, names=names, actor=actor, ip_address=ip_address
    )


def _ensure_another_enabled(upstream: Upstream, doing: str) -> None:
    others = upstream.project.upstreams.exclude(pk=upstream.pk)
    if not others.filter(enabled=True).exists():
        raise UpstreamRefused(
            f"“{upstream.name}” is the project's only enabled upstream: {doing} it would "
            "leave requests nowhere to go. Add or enable another upstream first."
        )


@transaction.atomic
def set_upstream_enabled(
    *,
    upstream: Upstream,
    enabled: bool,
    actor: User | None = None,
    ip_address: str | None = None,
) -> Upstream:
    lock_upstream(upstream)
    if upstream.enabled == enabled:
        return upstream
    if not enabled:
        _ensure_another_enabled(upstream, "disabling")
    upstream.enabled = enabled
    upstream.save(update_fields=["enabled"])
    record_audit_event(
        account=upstream.project.account,
        actor=actor,
        action="upstream_enabled" if enabled else "upstream_disabled",
        target=_upstream_target(upstream),
        ip_address=ip_address,
    )
    return upstream


@transaction.atomic
def remove_upstream(
    *, upstream: Upstream, actor: User | None = None, ip_address: str | None = None
) -> None:
    """Delete an upstream and its key; never the last one, nor the last enabled one."""
    project = upstream.project
    lock_upstream(upstream)
    if upstream.enabled:
        _ensure_another_enabled(upstream, "removing")
    record_audit_event(
        account=project.account,
        actor=actor,
        action="upstream_removed",
        target=_upstream_target(upstream, upstream.base_url),
        ip_address=ip_address,
    )
    upstream.delete()
    remaining = list(project.upstreams.order_by("position", "pk"))
    for position, other in enumerate(remaining):
        other.position = position
    Upstream.objects.bulk_update(remaining, ["position"])


def provider_key_of(target: Upstream | Project) -> str | None:
    """The decrypted provider key of an upstream (of a project: its primary's). None when it
    has none, or when the encryption keys no longer open it (`has_provider_key` tells which)."""
    if isinstance(target, Project):
        target = primary_upstream(target)
        if target is None:
            return None
    if not target.provider_key_encrypted:
        return None
    provider_key = encryption.decrypt_stored(
        target.provider_key_encrypted,
        project=target.project.public_id,
        upstream=target.name,
        stored="provider_key",
    )
    return None if provider_key is None else provider_key.decode()


def rotate_provider_keys(*, batch_size: int = 500) -> int:
    """Re-encrypt every stored provider key, of every upstream, under the primary key."""
    rotated = encryption.rotate_stored(Upstream, ["provider_key_encrypted"], batch_size=batch_size)
    logger.info("provider keys rotated", extra={"count": rotated})
    return rotated
