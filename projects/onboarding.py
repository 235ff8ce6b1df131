"""A working project in one step, for operators and the README quickstart: a verified user,
their account on a plan, a project with its upstream and provider key, and a new API key."""

from dataclasses import dataclass

from allauth.account.models import EmailAddress
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from accounts.models import Account, Membership, User
from accounts.services import create_account
from projects import services
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


@transaction.atomic
def bootstrap_project(
    *,
    email: str,
    upstream_url: str,
    upstream_key: str,
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
    project = account.projects.filter(name=DEFAULT_PROJECT_NAME).first()
    if project is None:
        project = services.create_project(
            account=account, name=DEFAULT_PROJECT_NAME, upstream_base_url=upstream_url
        )
    else:
        services.update_upstream(
            project=project,
            base_url=upstream_url,
            max_attempts=project.max_attempts,
            attempt_timeout_seconds=project.attempt_timeout_seconds,
            deadline_seconds=project.deadline_seconds,
            zero_retention=project.zero_retention,
        )
    services.set_provider_key(project=project, provider_key=upstream_key)
    _, raw_key = services.create_api_key(
        project=project, name=f"bootstrap {timezone.now():%Y-%m-%d %H:%M:%S.%f}"
    )
    return Bootstrapped(account=account, project=project, api_key=raw_key)
