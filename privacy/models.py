"""An account's data rights: exports (built in the background, kept encrypted for seven days)
and deletions in progress (the account is closed at once; its data goes once nothing runs)."""

from datetime import timedelta
from functools import partial

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.models import Account
from core.ids import new_public_id

EXPORT_LIFETIME = timedelta(days=7)


class AccountExport(models.Model):
    """One JSON export of an account. The file lives in its `chunks`: gzip-compressed, cut
    in pieces, each encrypted with the key ring, never on a served path; they are deleted
    when the export expires or fails."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a worker"
        RUNNING = "running", "Being built"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    public_id = models.CharField(
        max_length=40, unique=True, editable=False, default=partial(new_public_id, "exp")
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="exports")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent built.")
    # The origin the owner asked from (checked against ALLOWED_HOSTS), for the email's link.
    site_url = models.URLField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # When the build last moved (its claim, then each progress step): a build that has not
    # moved for a while is presumed lost with its worker, however long it has been running.
    progressed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            # Asking again while one is being built returns that one: never two builds at once.
            models.UniqueConstraint(
                fields=["account"],
                condition=Q(status__in=["pending", "running"]),
                name="one_export_in_progress_per_account",
            ),
            models.CheckConstraint(condition=Q(progress__lte=100), name="export_progress_percent"),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"

    @property
    def in_progress(self) -> bool:
        return self.status in (self.Status.PENDING, self.Status.RUNNING)


class AccountExportChunk(models.Model):
    """One piece of an export's file, in order: EXPORT_CHUNK_BYTES of its gzip stream (the
    last one less), encrypted with the key ring. Written as the build goes, so neither the
    worker nor a download ever holds the file whole, and no value nears PostgreSQL's 1 GB
    limit on one column."""

    # No index of its own: the unique (export, sequence) index serves lookups by export.
    export = models.ForeignKey(
        AccountExport, on_delete=models.CASCADE, related_name="chunks", db_index=False
    )
    sequence = models.PositiveIntegerField()
    content = models.BinaryField(editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["export", "sequence"], name="one_chunk_per_position")
        ]

    def __str__(self) -> str:
        return f"{self.export_id} #{self.sequence}"


class AccountDeletion(models.Model):
    """An account its owner deleted: nobody can reach it any more, and a worker deletes it
    (this row included) once no attempt of its requests is still running."""

    account = models.OneToOneField(Account, on_delete=models.CASCADE, related_name="deletion")
    requested_at = models.DateTimeField(auto_now_add=True)
    # A short grace after the cancellations, so callers they woke read their answer first.
    purge_after = models.DateTimeField()
    # The lease of the purge deleting it now (core.leases): another one queued meanwhile
    # leaves the account to it.
    purging_until = models.DateTimeField(null=True, blank=True, editable=False)

    def __str__(self) -> str:
        return f"deletion of {self.account.public_id}"
