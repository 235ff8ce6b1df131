"""A working project in one step, for operators and the README quickstart: a verified user,
their account on a plan, a project with its upstreams and their provider keys, and a new
API key."""

from dataclasses import dataclass

from allauth.account.models import EmailAddress
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from accounts.models import Account, Membership, User
from accounts.services import create_account
from projects import services, upstreams
from projects.limits import set_plan
from projects.models import Project

DEFAULT_PROJECT_NAME = "Default"


class BootstrapError(ValueError):
    """The input cannot make a working project; the message says why."""


@dataclass(frozen=True)
class Bootstrapped:
    account: Account
    project: Project
    api_key: str


def verified_user(*, email: str, password: str | None) -> User:
    """The user with this email (created if new), with a verified primary address."""
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError as error:
        raise BootstrapError(f"{email!r} is not a valid email address.") from error
    user = User.objects.filter(email__iexact=email).first()
    if user is None:
        user = User.objects.create_user(email=email, password=password)
        if password is None:
            user.set_unusable_password()  # they can set one through "forgot password"
            user.save(update_fields=["password"])
    elif password is not None:
        user.set_password(password)
        user.save(update_fields=["password"])
    EmailAddress.objects.filter(user=user).exclude(email__iexact=email).update(primary=False)
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    return user


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream as given on the command line."""

    name: str
    url: str
    key: str
    model_map: dict[str, str]


def upstream_specs(
    *,
    urls: list[str],
    keys: list[str],
    names: list[str] | None = None,
    model_maps: list[str] | None = None,
) -> list[UpstreamSpec]:
    """Pair the repeated flags: `primary`, `fallback-1`, … unless `names` names them, and
    `NAME=SRC:DST` model-map entries attached to the upstream they name."""
    if not urls or len(urls) != len(keys):
        raise BootstrapError(
            "Give each --upstream-url its --upstream-key, in the same order "
            f"({len(urls)} URL(s), {len(keys)} key(s))."
        )
    names = names or [
        upstreams.PRIMARY_NAME if index == 0 else f"fallback-{index}" for index in range(len(urls))
    ]
    if len(names) != len(urls):
        raise BootstrapError(
            f"Give one --upstream-name per upstream ({len(urls)} upstream(s), "
            f"{len(names)} name(s))."
        )
    if len(set(names)) != len(names):
        raise BootstrapError("Each --upstream-name must be different.")
    maps: dict[str, dict[str, str]] = {name: {} for name in names}
    for entry in model_maps or []:
        name, equals, pair = entry.partition("=")
        source, colon, destination = pair.partition(":")  # DST may hold colons
        if not equals or not colon or not source.strip() or not destination.strip():
            raise BootstrapError(f"--model-map {entry!r}: write it as NAME=SRC:DST.")
        if name not in maps:
            raise BootstrapError(
                f"--model-map {entry!r}: there is no upstream named {name!r} "
                f"(upstreams: {', '.join(names)})."
            )
        maps[name][source.strip()] = destination.strip()
    return [
        UpstreamSpec(name=name, url=url, key=key, model_map=maps[name])
        for name, url, key in zip(names, urls, keys, strict=True)
    ]


def set_upstreams(*, project: Project, specs: list[UpstreamSpec]) -> None:
    """Make the project's upstreams exactly `specs`, in that order: those with a given name
    are updated, new ones added (within the plan's cap), the others removed."""
    wanted = {spec.name for spec in specs}
    existing = {upstream.name: upstream for upstream in project.upstreams.all()}
    for name, upstream in existing.items():
        if name not in wanted:
            upstream.delete()  # before adding, so the cap counts what will remain
    for spec in specs:
        upstream = existing.get(spec.name)
        if upstream is None:
            upstream = upstreams.add_upstream(
                project=project, name=spec.name, base_url=spec.url, model_map=spec.model_map
            )
        else:
            upstreams.update_upstream(
                upstream=upstream, base_url=spec.url, model_map=spec.model_map
            )
            if not upstream.enabled:
                upstreams.set_upstream_enabled(upstream=upstream, enabled=True)
        upstreams.set_upstream_key(upstream=upstream, provider_key=spec.key)
    upstreams.reorder_upstreams(project=project, names=[spec.name for spec in specs])


@transaction.atomic
def bootstrap_project(
    *,
    email: str,
    upstreams: list[UpstreamSpec],
    plan_code: str | None = None,
    password: str | None = None,
) -> Bootstrapped:
    """Create or reuse everything; only the API key is always new. All or nothing."""
    user = verified_user(email=email, password=password)
    owned = user.memberships.filter(role=Membership.Role.OWNER).select_related("account")
    membership = owned.order_by("created_at").first()
    account = membership.account if membership else create_account(owner=user)
    if plan_code:
        set_plan(account=account, plan_code=plan_code)
    project = account.projects.not_deleted().filter(name=DEFAULT_PROJECT_NAME).first()
    if project is None:
        project = services.create_project(
            account=account, name=DEFAULT_PROJECT_NAME, upstream_base_url=upstreams[0].url
        )
    set_upstreams(project=project, specs=upstreams)
    _, raw_key = services.create_api_key(
        project=project, name=f"bootstrap {timezone.now():%Y-%m-%d %H:%M:%S.%f}"
    )
    return Bootstrapped(account=account, project=project, api_key=raw_key)
