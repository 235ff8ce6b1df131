"""factory-boy factories for every model."""

from datetime import timedelta

import factory
from allauth.account.models import EmailAddress
from django.utils import timezone

from accounts.models import Account, AuditEvent, Membership, User
from core.stripes import STRIPES
from projects.limits import current_period_start
from projects.models import (
    AccountPlan,
    ApiKey,
    Invitation,
    MonthlyUsage,
    Plan,
    Project,
    UsageStripe,
)
from projects.services import create_api_key

PASSWORD = "correct horse battery staple 42"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ["email"]
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def verified(self, create, extracted, **kwargs):
        self.save()
        if create and extracted is not False:
            EmailAddress.objects.get_or_create(
                user=self, email=self.email, defaults={"verified": True, "primary": True}
            )


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account

    name = factory.Sequence(lambda n: f"Workspace {n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    user = factory.SubFactory(UserFactory)
    account = factory.SubFactory(AccountFactory)
    role = Membership.Role.OWNER


class AuditEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AuditEvent

    account = factory.SubFactory(AccountFactory)
    action = "sign_in"


# projects: plans are seeded by a migration, so factories pick a seeded row by code.


def plan(code: str = "free") -> Plan:
    return Plan.objects.get(code=code)


class AccountPlanFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AccountPlan
        django_get_or_create = ["account"]

    account = factory.SubFactory(AccountFactory)
    plan = factory.LazyFunction(plan)


class MonthlyUsageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MonthlyUsage
        skip_postgeneration_save = True

    account = factory.SubFactory(AccountFactory)
    period_start = factory.LazyFunction(current_period_start)

    @factory.post_generation
    def accepted_requests(usage, create, count, **kwargs):
        """`accepted_requests=N`: the month's count, kept in its first stripe."""
        if count:
            set_accepted_requests(usage.account, count, usage.period_start)


def set_accepted_requests(account, count: int, period_start=None) -> None:
    """As if `count` requests had been accepted in the month (this one by default)."""
    period = period_start or current_period_start()
    MonthlyUsage.objects.get_or_create(account=account, period_start=period)
    UsageStripe.objects.filter(account=account, period_start=period).delete()
    UsageStripe.objects.create(account=account, period_start=period, stripe=0, accepted=count)


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    account = factory.SubFactory(AccountFactory)
    name = factory.Sequence(lambda n: f"Project {n}")


class ApiKeyFactory(factory.django.DjangoModelFactory):
    """Made by the real service; the full key is on `.raw_key` (as the user saw it once)."""

    class Meta:
        model = ApiKey

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"key {n}")

    @classmethod
    def _create(cls, model_class, *, project, name, **kwargs):
        api_key, raw_key = create_api_key(project=project, name=name, **kwargs)
        api_key.raw_key = raw_key
        return api_key


class InvitationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Invitation

    account = factory.SubFactory(AccountFactory)
    email = factory.Sequence(lambda n: f"invitee{n}@example.com")
    role = Membership.Role.MEMBER


# ---------- billing ----------


def _plan(code: str):
    from projects.models import Plan

    return Plan.objects.get(code=code)


def _days_from_now(days: int):
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() + timedelta(days=days)


class SubscriptionFactory(factory.django.DjangoModelFactory):
    """A live Pro subscription, as a webhook would have left it (the account's plan is not
    changed: use billing.services.sync_account_plan or deliver events for that)."""

    class Meta:
        model = "billing.Subscription"

    account = factory.SubFactory(AccountFactory)
    paddle_subscription_id = factory.Sequence(lambda n: f"sub_01hv8factory{n:014d}")
    paddle_customer_id = factory.Sequence(lambda n: f"ctm_01hv8factory{n:014d}")
    status = "active"
    plan = factory.LazyFunction(lambda: _plan("pro"))
    price_id = "pri_01hv8pro0000000000000000"
    current_period_start = factory.LazyFunction(lambda: _days_from_now(-3))
    current_period_end = factory.LazyFunction(lambda: _days_from_now(27))
    last_event_occurred_at = factory.LazyFunction(lambda: _days_from_now(0))


class WebhookEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "billing.WebhookEvent"

    event_id = factory.Sequence(lambda n: f"evt_01hv8factory{n:014d}")
    event_type = "subscription.created"
    occurred_at = factory.LazyFunction(lambda: _days_from_now(0))
    payload = factory.LazyAttribute(
        lambda event: {"event_id": event.event_id, "event_type": event.event_type, "data": {}}
    )


class InvoiceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "billing.Invoice"

    account = factory.SubFactory(AccountFactory)
    paddle_transaction_id = factory.Sequence(lambda n: f"txn_01hv8factory{n:014d}")
    invoice_number = factory.Sequence(lambda n: f"325-{10000 + n}")
    amount_minor = 2900
    currency_code = "USD"
    billed_at = factory.LazyFunction(lambda: _days_from_now(0))


class RequestFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "requests_app.Request"

    project = factory.SubFactory(ProjectFactory)
    account = factory.SelfAttribute("project.account")
    endpoint = "/v1/chat/completions"
    model = "gpt-test"
    body_sha256 = "0" * 64
    deadline_at = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=15))
    max_attempts = 3


class AttemptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "requests_app.Attempt"

    request = factory.SubFactory(RequestFactory)
    number = factory.Sequence(lambda n: n + 1)
    started_at = factory.LazyFunction(timezone.now)
    outcome = "success"
    status_code = 200


def make_counter_stripes(account) -> None:
    """The account's counters as its first accepted request leaves them once it finished:
    this month's row, and every stripe of the month's count and of the pending count at 0."""
    from requests_app.models import PendingStripe

    MonthlyUsage.objects.get_or_create(account=account, period_start=current_period_start())
    for stripe in range(STRIPES):
        UsageStripe.objects.get_or_create(
            account=account, period_start=current_period_start(), stripe=stripe
        )
        PendingStripe.objects.get_or_create(account=account, stripe=stripe)


# ---------- privacy ----------


class AccountExportFactory(factory.django.DjangoModelFactory):
    """An export waiting for a worker; pass `status`, `expires_at` for others."""

    class Meta:
        model = "privacy.AccountExport"

    account = factory.SubFactory(AccountFactory)
    site_url = "http://testserver/"


class AccountExportChunkFactory(factory.django.DjangoModelFactory):
    """A piece of an export's file (not a real one: any bytes)."""

    class Meta:
        model = "privacy.AccountExportChunk"

    export = factory.SubFactory(AccountExportFactory, status="ready")
    sequence = 0
    content = b"x"


class AccountDeletionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "privacy.AccountDeletion"

    account = factory.SubFactory(AccountFactory)
    purge_after = factory.LazyFunction(timezone.now)
