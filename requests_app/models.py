"""Request records and their attempts: the source of truth for every accepted call."""

from functools import partial

from django.db import models
from django.db.models import Q

from accounts.models import Account
from core.ids import new_public_id
from projects.models import ApiKey, Project


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"


ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING, Status.RETRYING)
TERMINAL_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.EXPIRED)


class Request(models.Model):
    public_id = models.CharField(
        max_length=40, unique=True, editable=False, default=partial(new_public_id, "req")
    )
    # No index of their own: the composite indexes below lead with them (every index is
    # written on each insert, claim and conclusion).
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="requests", db_index=False
    )
    api_key = models.ForeignKey(ApiKey, null=True, on_delete=models.SET_NULL, related_name="+")

    endpoint = models.CharField(max_length=64)
    model = models.CharField(max_length=200, blank=True)
    stream = models.BooleanField(default=False)
    body_sha256 = models.CharField(max_length=64)  # keyed: HMAC-SHA256, see body_digest()
    request_body = models.BinaryField(null=True, editable=False)  # encrypted

    # Shown to the client; `idempotency_slot` holds the key only while it is remembered
    # (24 h) and carries the uniqueness constraint.
    # NULL, not "", means "no key": the API shows null and the partial unique index skips it.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    idempotency_slot = models.CharField(  # noqa: DJ001
        max_length=255, null=True, blank=True, editable=False
    )

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField()

    # Execution bookkeeping. `attempt_count` is also the fencing token: a worker may only
    # write the outcome of the attempt number it claimed.
    attempt_count = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField()
    lease_until = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # Set when a streamed answer's first bytes left for the client: no retry after this.
    first_byte_at = models.DateTimeField(null=True, blank=True)
    # Failover: the upstream (by name) the next attempt goes to, "" for where requests
    # start, and how many attempts in a row it has had in this round.
    next_upstream = models.CharField(max_length=40, blank=True, default="")
    upstream_tries = models.PositiveSmallIntegerField(default=0)

    response_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(null=True, blank=True)
    response_body = models.BinaryField(null=True, editable=False)  # encrypted, raw bytes
    response_expires_at = models.DateTimeField(null=True, blank=True)
    # Zero retention: how many callers waiting on the request (its creator, attached
    # retries) are still owed its answer; the last one's delivery forgets it.
    owed_deliveries = models.PositiveSmallIntegerField(default=0)
    usage = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    partial = models.BooleanField(default=False)

    class Meta:
        ordering = ["-public_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "idempotency_slot"],
                condition=Q(idempotency_slot__isnull=False),
                name="one_request_per_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(fields=["project", "-public_id"], name="request_project_newest"),
            models.Index(
                fields=["project", "status", "-public_id"], name="request_project_status_newest"
            ),
            models.Index(fields=["account", "created_at"], name="request_account_created"),
            models.Index(
                fields=["account", "status"],
                name="request_account_status",
                condition=Q(status__in=["queued", "running", "retrying"]),
            ),
            models.Index(
                fields=["status", "next_attempt_at"],
                name="request_due",
                condition=Q(status__in=["queued", "running", "retrying"]),
            ),
            models.Index(fields=["project", "idempotency_key"], name="request_idempotency_key"),
            # The retention purge's stored answers past their 24 hours, without a table scan.
            models.Index(
                fields=["response_expires_at"],
                name="request_response_kept",
                condition=Q(response_body__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.public_id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def attempts_as_read(self) -> list["Attempt"]:
        """Its attempts as they stood when this row was read.

        They are a second read (a prefetch, or a query now): a claim or a conclusion that
        commits in between shows an attempt the row does not count yet, or ends the attempt
        of a row still `running`. The engine opens and closes an attempt in the statement
        that moves the request, so the row says how each attempt stood: one it does not
        count is left out, and its running attempt is shown open, as it was."""
        shown = []
        for attempt in self.attempts.all():
            if attempt.number > self.attempt_count:
                continue
            if (
                self.status == Status.RUNNING
                and attempt.number == self.attempt_count
                and attempt.finished_at is not None
            ):
                attempt = Attempt(
                    id=attempt.id,
                    request_id=attempt.request_id,
                    number=attempt.number,
                    upstream=attempt.upstream,
                    started_at=attempt.started_at,
                )
            shown.append(attempt)
        return shown


class Attempt(models.Model):
    class Outcome(models.TextChoices):
        SUCCESS = "success"
        RETRYABLE_ERROR = "retryable_error"
        FATAL_ERROR = "fatal_error"
        TIMEOUT = "timeout"
        CONNECTION_ERROR = "connection_error"

    # Indexed by one_row_per_attempt, which leads with it.
    request = models.ForeignKey(
        Request, on_delete=models.CASCADE, related_name="attempts", db_index=False
    )
    number = models.PositiveSmallIntegerField()
    upstream = models.CharField(max_length=40, blank=True, default="")  # its name, when sent
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001 - API null
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    retry_after_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["request", "number"], name="one_row_per_attempt"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}#{self.number}"


class DailyUsage(models.Model):
    """Counts kept for a project's day once its request records are purged (retention), so
    the usage page still shows the whole period. Added to in the purge's own transaction."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    requests = models.PositiveIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0)
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # Succeeded requests whose usage the upstream did not report (not in `tokens`).
    unreported = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "day"], name="one_usage_row_per_day"),
        ]

    def __str__(self) -> str:
        return f"{self.project_id} on {self.day}"


class PendingStripe(models.Model):
    """One of the counters whose sum is how many of an account's requests are queued,
    running or retrying.

    Kept in the engine's own statements (engine/sql.py): +1 on a stripe with room in the
    accept's transaction, −1 on the request's own stripe (its id modulo `STRIPES`) in the
    statement that ends it, so the pending cap is one conditional UPDATE instead of a count
    of every unfinished request, and one account's accepts and conclusions do not queue at
    one row (core/stripes.py).
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    stripe = models.PositiveSmallIntegerField()
    pending = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "stripe"], name="one_pending_stripe"),
        ]

    def __str__(self) -> str:
        return f"{self.account_id}, stripe {self.stripe}: {self.pending} pending"
