"""factory-boy factories for every model."""

import factory
from allauth.account.models import EmailAddress

from accounts.models import Account, AuditEvent, Membership, User
from projects.limits import current_period_start
from projects.models import AccountPlan, ApiKey, Invitation, MonthlyUsage, Plan, Project
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

    account = factory.SubFactory(AccountFactory)
    period_start = factory.LazyFunction(current_period_start)
    accepted_requests = 0


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

