"""Plans and their limits, projects with their ordered upstreams, ReqRun API keys,
invitations."""

import json
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Account, AuditEvent, Membership
from core.ids import new_public_id
from core.untrusted import parse_json

LIMIT_FIELDS = (
    "projects",
    "api_keys_per_project",
    "monthly_requests",
    "retention_days",
    "pending_requests",
    "concurrency",
    "requests_per_minute",
    "max_attempts",
    "members",
    "upstreams_per_project",
)


class Plan(models.Model):
    """A row per plan; operators edit limits in admin. Seeded by a data migration."""

    code = models.SlugField(max_length=20, unique=True)
    name = models.CharField(max_length=40)
    price_cents_monthly = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty for 'contact us' plans."
    )
    paddle_price_id = models.CharField(
        max_length=64,
        blank=True,
        validators=[
            RegexValidator(
                r"^pri_[a-z0-9]+\Z",
                "Enter a Paddle price id: pri_ and lowercase letters or digits.",
            )
        ],
        help_text="Paddle's price id (pri_…); PADDLE_PRICES, where it names this plan, wins.",
    )
    self_serve = models.BooleanField(default=True, help_text="Can be bought from the pricing page.")
    sort_order = models.PositiveSmallIntegerField(default=0)

    projects = models.PositiveIntegerField()
    api_keys_per_project = models.PositiveIntegerField()
    monthly_requests = models.PositiveBigIntegerField()
    retention_days = models.PositiveIntegerField()
    pending_requests = models.PositiveIntegerField()
    # At least one: 0 would leave every accepted request waiting until its deadline.
    concurrency = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    requests_per_minute = models.PositiveIntegerField()
    max_attempts = models.PositiveSmallIntegerField(validators=[MinValueValidator(1)])
    members = models.PositiveIntegerField()
    upstreams_per_project = models.PositiveIntegerField()

    class Meta:
        ordering = ["sort_order"]
        constraints = [
            # A webhook's price id names one plan (billing.selectors.plan_for_price).
            models.UniqueConstraint(
                fields=["paddle_price_id"],
                condition=~Q(paddle_price_id=""),
                name="plan_price_id_unique",
                violation_error_message="Another plan already has this Paddle price id.",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class AccountPlan(models.Model):
    """Which plan an account is on, and any single limit an operator overrode for it."""

    account = models.OneToOneField(Account, on_delete=models.CASCADE, related_name="plan_state")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    changed_at = models.DateTimeField(auto_now=True)

    projects = models.PositiveIntegerField(null=True, blank=True)
    api_keys_per_project = models.PositiveIntegerField(null=True, blank=True)
    monthly_requests = models.PositiveBigIntegerField(null=True, blank=True)
    retention_days = models.PositiveIntegerField(null=True, blank=True)
    pending_requests = models.PositiveIntegerField(null=True, blank=True)
    concurrency = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_attempts = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    members = models.PositiveIntegerField(null=True, blank=True)
    upstreams_per_project = models.PositiveIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.account} on {self.plan}"


class MonthlyUsageQuerySet(models.QuerySet):
    def with_accepted(self) -> "MonthlyUsageQuerySet":
        """Each row with `accepted_requests`: its month's accepts, the sum of its stripes."""
        accepted = (
            UsageStripe.objects.filter(
                account=models.OuterRef("account"), period_start=models.OuterRef("period_start")
            )
            .values("account")
            .annotate(total=models.Sum("accepted"))
            .values("total")
        )
        return self.annotate(
            accepted_requests=Coalesce(
                models.Subquery(accepted, output_field=models.BigIntegerField()), 0
            )
        )


class MonthlyUsage(models.Model):
    """One calendar month (UTC) of an account: the usage notices sent for it. Its accepted
    requests are counted in its `UsageStripe` rows (`with_accepted()` sums them)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="monthly_usage")
    period_start = models.DateField()
    notified_80_at = models.DateTimeField(null=True, blank=True)
    notified_100_at = models.DateTimeField(null=True, blank=True)
    notified_quota = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="The monthly quota the usage notices above were sent for; empty on rows "
        "notified before it was recorded (their notices count for the quota in force).",
    )

    objects = MonthlyUsageQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "period_start"], name="one_usage_row_per_month"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account} in {self.period_start:%Y-%m}"


class UsageStripe(models.Model):
    """One of the counters whose sum is an account's accepted requests in a month: the
    accept adds to any stripe with room, so one account's accepts do not queue at one row
    (core/stripes.py)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    period_start = models.DateField()
    stripe = models.PositiveSmallIntegerField()
    accepted = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "period_start", "stripe"], name="one_usage_stripe"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account_id} in {self.period_start:%Y-%m}, stripe {self.stripe}"


class FailoverOn(models.TextChoices):
    """The outcomes of an attempt that move a request to the project's next upstream."""

    CONNECTION_ERROR = "connection_error", "Connection errors"
    TIMEOUT = "timeout", "Timeouts"
    SERVER_ERROR = "server_error", "5xx answers"
    RATE_LIMITED = "rate_limited", "429 answers, including insufficient_quota"
    UNREADABLE = (
        "unreadable_answer",
        "Answers no client can read (redirects, non-JSON, invalid status or event stream)",
    )


# A new project's policy. Answers no client can read are left out: they mean an upstream's
# base URL is wrong (or behind a captive proxy), which the project's owner asks to route
# around, rather than an outage (PRODUCT.md, "Failover across upstreams").
DEFAULT_FAILOVER_ON = (
    FailoverOn.CONNECTION_ERROR,
    FailoverOn.TIMEOUT,
    FailoverOn.SERVER_ERROR,
    FailoverOn.RATE_LIMITED,
)


def default_failover_on() -> list[str]:
    return [value.value for value in DEFAULT_FAILOVER_ON]


# The longest deadline a project can be given: no attempt of a request starts later than
# this after its acceptance (the dashboard's last-hour upstream figures rely on it).
DEADLINE_MAX_SECONDS = 86_400
ATTEMPT_TIMEOUT_MAX_SECONDS = 600  # the longest one attempt waits for its upstream
FAILOVER_TRIES_MAX = 10


class ProjectQuerySet(models.QuerySet):
    def not_deleted(self) -> "ProjectQuerySet":
        """The projects nobody deleted: the only ones a tenant sees or uses."""
        return self.filter(deleted_at__isnull=True)


class Project(models.Model):
    public_id = models.CharField(
        max_length=40, unique=True, editable=False, default=partial(new_public_id, "prj")
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)

    max_attempts = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Empty: the plan's maximum."
    )
    attempt_timeout_seconds = models.PositiveIntegerField(
        default=120,
        validators=[MinValueValidator(1), MaxValueValidator(ATTEMPT_TIMEOUT_MAX_SECONDS)],
    )
    deadline_seconds = models.PositiveIntegerField(
        default=900,
        validators=[MinValueValidator(1), MaxValueValidator(DEADLINE_MAX_SECONDS)],
        help_text="After this long from acceptance, no new attempt starts.",
    )
    zero_retention = models.BooleanField(
        default=False, help_text="Do not keep response bodies after delivery in wait mode."
    )

    # Failover (docs/failover.md): which outcomes move a request to the next upstream, how
    # many tries one upstream gets first, and where the next request starts.
    failover_on = ArrayField(
        models.CharField(max_length=20, choices=FailoverOn.choices),
        default=default_failover_on,
        blank=True,
    )
    failover_tries_per_upstream = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(FAILOVER_TRIES_MAX)]
    )
    failover_return_to_primary = models.BooleanField(
        default=True,
        help_text="Start every request on the primary. Off: start where the last one succeeded.",
    )
    # Off `failover_return_to_primary`: the upstream the last request succeeded on.
    failover_current = models.CharField(max_length=40, blank=True, editable=False)

    suspended_at = models.DateTimeField(null=True, blank=True)
    suspension_reason = models.TextField(blank=True)
    # Set when the project is deleted: from then on nobody sees or uses it (every lookup
    # by a tenant skips it, its keys are revoked), and a worker deletes its requests in
    # batches, then this row (projects.services.purge_deleted_project).
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)
    # While a purge runs it holds this lease, renewed at each batch: another purge of the
    # project (the sweep queues one every minute) leaves it alone until it runs out.
    purging_until = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [
            # A deleted project's name is free again at once.
            models.UniqueConstraint(
                fields=["account", "name"],
                condition=Q(deleted_at__isnull=True),
                name="project_name_unique_in_account",
            ),
            models.CheckConstraint(
                condition=Q(attempt_timeout_seconds__gte=1), name="attempt_timeout_positive"
            ),
            models.CheckConstraint(
                condition=Q(failover_tries_per_upstream__gte=1), name="failover_tries_positive"
            ),
        ]
        indexes = [
            # The few deletions still to purge, for the privacy sweep.
            models.Index(
                fields=["deleted_at"],
                name="project_deleted",
                condition=Q(deleted_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"

    @property
    def is_suspended(self) -> bool:
        return self.suspended_at is not None


class Upstream(models.Model):
    """One provider a project's requests can be sent to; position 0 is the primary.

    The provider key is encrypted with the key ring (`core.encryption`) and shown only by
    its last four characters. The model map renames the request's top-level `model` for
    this provider (`{"gpt-4o-mini": "their-model"}`); unmapped models pass unchanged."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="upstreams")
    name = models.SlugField(max_length=40)
    position = models.PositiveSmallIntegerField(default=0)
    base_url = models.URLField(max_length=500, default=settings.REQRUN_DEFAULT_UPSTREAM_URL)
    provider_key_encrypted = models.BinaryField(null=True, blank=True, editable=False)
    provider_key_last4 = models.CharField(max_length=4, blank=True, editable=False)
    model_map = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # The circuit breaker (requests_app/engine/breaker.py), shared by every process: closed
    # while `breaker_open_until` is empty; open until then; afterwards half-open, and one
    # attempt at a time (`breaker_probe_until`) may test the upstream.
    breaker_failures = models.PositiveIntegerField(default=0, editable=False)
    breaker_window_started = models.DateTimeField(null=True, blank=True, editable=False)
    breaker_opened_at = models.DateTimeField(null=True, blank=True, editable=False)
    breaker_open_until = models.DateTimeField(null=True, blank=True, editable=False)
    breaker_probe_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["position", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"], name="upstream_name_unique_in_project"
            ),
        ]
        indexes = [
            # The few upstreams whose breaker is not closed, for /metrics.
            models.Index(
                fields=["breaker_open_until"],
                name="upstream_breaker_not_closed",
                condition=Q(breaker_open_until__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.base_url})"

    @property
    def has_provider_key(self) -> bool:
        return bool(self.provider_key_encrypted)

    def mapped_body(self, body: bytes) -> bytes:
        """The request body for this upstream: the top-level "model" renamed by the model
        map, the rest as parsed. Byte-identical when the model is not mapped."""
        if not self.model_map:
            return body
        try:
            payload = parse_json(body)
        except ValueError:
            return body
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
            return body
        mapped = self.model_map.get(payload["model"])
        if not isinstance(mapped, str) or not mapped:
            return body
        payload["model"] = mapped
        try:
            return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            # An escaped lone surrogate (valid JSON, and accepted) has no UTF-8: kept escaped.
            return json.dumps(payload, separators=(",", ":")).encode()


class UpstreamMove(models.Model):
    """An upstream pointed at another host (`record_upstream_move`): what the owners' email
    about it says, so that an email the mail server refused is sent again from this row.
    Who moved it, when and from where are in its security-log entry."""

    upstream = models.ForeignKey(Upstream, on_delete=models.CASCADE, related_name="moves")
    audit_event = models.OneToOneField(AuditEvent, on_delete=models.CASCADE, related_name="+")
    old_origin = models.TextField()
    new_origin = models.TextField()
    provider_key_cleared = models.BooleanField()

    def __str__(self) -> str:
        return f"{self.old_origin} → {self.new_origin}"


class ApiKey(models.Model):
    """A ReqRun key `rr_<prefix>_<secret>`: only the prefix and SHA-256 of the secret are kept."""

    public_id = models.CharField(
        max_length=40, unique=True, editable=False, default=partial(new_public_id, "key")
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_sha256 = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} (rr_{self.prefix}_…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


# How long an invitation's link works; after that the invitation is expired and holds no seat.
INVITATION_VALID_FOR = timedelta(days=7)


class Invitation(models.Model):
    public_id = models.CharField(
        max_length=40, unique=True, editable=False, default=partial(new_public_id, "inv")
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(
        max_length=10, choices=Membership.Role.choices, default=Membership.Role.MEMBER
    )
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} → {self.account}"

    @property
    def is_expired(self) -> bool:
        return self.created_at <= timezone.now() - INVITATION_VALID_FOR
