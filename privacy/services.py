"""Account exports: asking for one, building it in a worker, downloading it, expiring it.

An export is built once per request: asking again while one is pending or running returns
that one. The file is gzip-compressed JSON stored in the database (never on a path a web
server serves) in chunks, each encrypted with the key ring, written as the build goes and
read one at a time by a download: neither holds more than a chunk of it, however big the
account. The chunks are deleted after seven days, or as soon as the export fails.
"""

import io
import itertools
import logging
import zlib
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from allauth.usersessions.models import UserSession
from django.contrib.sessions.models import Session
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.emails import send_email, send_or_retry
from accounts.models import Account, User
from accounts.services import record_audit_event
from core import encryption
from core.logs import DeliberateAbort
from privacy import document
from privacy.models import EXPORT_LIFETIME, AccountDeletion, AccountExport, AccountExportChunk

logger = logging.getLogger(__name__)

Status = AccountExport.Status
IN_PROGRESS = (Status.PENDING, Status.RUNNING)
# A build whose progress has not moved for this long is presumed lost with its worker and
# marked failed. Its age does not count: a big account's build may run for hours, and the
# threads pool does not enforce the task's time limit.
BUILD_STALE_AFTER = timedelta(minutes=20)
# An export still pending after this long lost its task in the broker: queue it again.
ENQUEUE_LOST_AFTER = timedelta(minutes=2)
# Compressed bytes per stored chunk: what the worker holds of the file at most, and what a
# download reads (and decrypts) at once.
EXPORT_CHUNK_BYTES = 1024 * 1024
# Decompressed bytes per piece a download sends.
DOWNLOAD_CHUNK_BYTES = 64 * 1024
# Chunks re-encrypted per transaction by a key rotation (each about 1.4 MB encrypted).
ROTATION_BATCH_CHUNKS = 8


class ExportUnavailable(Exception):
    """The export cannot be downloaded (not ready, failed or expired); the message says why."""


class ExportCut(DeliberateAbort):
    """The export's file went (it expired, its chunks deleted) while it was being downloaded:
    the download must fail, so the client sees an incomplete transfer, not a shorter file."""


def _enqueue(export_pk: int) -> None:
    from privacy.tasks import build_export  # the task module imports this one

    build_export.delay(export_pk)


def request_export(
    *, account: Account, actor: User, site_url: str, ip_address: str | None = None
) -> tuple[AccountExport, bool]:
    """Queue an export of `account`; the one already in progress if there is one.

    Returns the export and whether it is new. `site_url` is where the email's link points.
    ExportUnavailable if the account has been deleted.
    """
    try:
        with transaction.atomic():
            Account.objects.select_for_update().get(pk=account.pk)
            # Asked in the instant the account was deleted: checked under the lock its
            # deletion took, so a closed account builds (and emails) nothing.
            if AccountDeletion.objects.filter(account=account).exists():
                raise ExportUnavailable("This account was deleted; there is nothing to export.")
            existing = account.exports.filter(status__in=IN_PROGRESS).first()
            if existing is not None:
                return existing, False
            export = AccountExport.objects.create(
                account=account, requested_by=actor, site_url=site_url
            )
            record_audit_event(
                account=account,
                actor=actor,
                action="export",
                target=f"{export.public_id} requested",
                ip_address=ip_address,
            )
            transaction.on_commit(lambda: _enqueue(export.pk))
    except IntegrityError:  # one in progress was created meanwhile: the constraint holds
        return account.exports.get(status__in=IN_PROGRESS), False
    logger.info(
        "export requested", extra={"account_id": account.public_id, "export_id": export.public_id}
    )
    return export, True


class _ClaimLost(Exception):
    """The build's export is no longer its to write: it was presumed lost and failed, or its
    account was deleted."""


def _store_chunk(*, export_pk: int, started_at: datetime, sequence: int, data: bytes) -> None:
    """Store one chunk of the build claimed at `started_at`; _ClaimLost if the export is no
    longer that build's. Checked under the export's row lock, so a build failed meanwhile
    (see `recover_exports`) adds nothing after its chunks were deleted."""
    content = encryption.encrypt(data)
    with transaction.atomic():
        claimed = AccountExport.objects.select_for_update().filter(
            pk=export_pk, status=Status.RUNNING, started_at=started_at
        )
        if not claimed.exists():
            raise _ClaimLost
        AccountExportChunk.objects.create(export_id=export_pk, sequence=sequence, content=content)


class _ChunkedFile(io.TextIOBase):
    """Text in; gzip-compressed UTF-8 stored as it fills, in chunks of EXPORT_CHUNK_BYTES,
    so no more than one chunk is ever held. Counts the uncompressed bytes."""

    def __init__(self, *, export_pk: int, started_at: datetime):
        self.export_pk, self.started_at = export_pk, started_at
        self.compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip stream
        self.pending = bytearray()
        self.chunks = 0
        self.size = 0

    def write(self, text: str) -> int:
        data = text.encode()
        self.size += len(data)
        self._add(self.compressor.compress(data))
        return len(text)

    def finish(self) -> None:
        """Store the end of the stream, the last chunk."""
        self._add(self.compressor.flush())
        self._store(bytes(self.pending))

    def _add(self, compressed: bytes) -> None:
        self.pending += compressed
        while len(self.pending) >= EXPORT_CHUNK_BYTES:
            self._store(bytes(self.pending[:EXPORT_CHUNK_BYTES]))
            del self.pending[:EXPORT_CHUNK_BYTES]

    def _store(self, data: bytes) -> None:
        _store_chunk(
            export_pk=self.export_pk, started_at=self.started_at, sequence=self.chunks, data=data
        )
        self.chunks += 1


def record_progress(*, export_pk: int, started_at: datetime, percent: int) -> None:
    """Show how far the build is, and that it is alive (see `recover_exports`)."""
    AccountExport.objects.filter(pk=export_pk, status=Status.RUNNING, started_at=started_at).update(
        progress=percent, progressed_at=timezone.now()
    )


def build_export(*, export_pk: int) -> AccountExport | None:
    """Build a pending export. A second run (redelivered task) finds it claimed and returns.

    The claim sets `started_at`, and every later write (each chunk of the file included)
    names it, so a build presumed lost can no longer write to the export, and stops.
    """
    started_at = timezone.now()
    claimed = AccountExport.objects.filter(pk=export_pk, status=Status.PENDING).update(
        status=Status.RUNNING, started_at=started_at, progressed_at=started_at, progress=0
    )
    if not claimed:
        return None
    export = AccountExport.objects.select_related("account", "requested_by").get(pk=export_pk)
    file = _ChunkedFile(export_pk=export_pk, started_at=started_at)
    shown = 0

    def on_progress(percent: int) -> None:
        nonlocal shown
        if percent > shown:
            shown = percent
            record_progress(export_pk=export_pk, started_at=started_at, percent=percent)

    try:
        document.write_export(
            account=export.account, out=file, now=started_at, on_progress=on_progress
        )
        file.finish()
    except _ClaimLost:
        logger.warning(
            "export build stopped: no longer its own", extra={"export_id": export.public_id}
        )
        return None
    except Exception as error:
        # The type only: the document is the customer's data and never reaches a log.
        logger.warning(
            "export failed", extra={"export_id": export.public_id, "error": type(error).__name__}
        )
        AccountExport.objects.filter(
            pk=export_pk, status=Status.RUNNING, started_at=started_at
        ).update(
            status=Status.FAILED,
            finished_at=timezone.now(),
            error="The export could not be built. Request a new one; if it fails again, "
            "contact support@reqrun.com.",
        )
        delete_unserved_chunks()
        return None
    finished_at = timezone.now()
    ready = AccountExport.objects.filter(
        pk=export_pk, status=Status.RUNNING, started_at=started_at
    ).update(
        status=Status.READY,
        progress=100,
        size_bytes=file.size,
        finished_at=finished_at,
        expires_at=finished_at + EXPORT_LIFETIME,
    )
    if not ready:
        return None
    export.refresh_from_db()
    logger.info(
        "export ready",
        extra={"export_id": export.public_id, "size_bytes": file.size, "chunks": file.chunks},
    )
    from privacy import tasks  # the task module imports this one

    # The export stays listed on the page; an email the mail server refused comes later.
    send_or_retry(
        lambda: send_ready_email(export_pk=export_pk),
        task=tasks.send_export_ready_email,
        ids=(export_pk,),
    )
    return export


def send_ready_email(*, export_pk: int) -> bool:
    """Tell whoever asked that the export can be downloaded, with a link; False if nobody
    asked or it can no longer be (expired, failed, its account deleted). Raises MAIL_ERRORS
    when the mail server refuses it."""
    export = (
        AccountExport.objects.select_related("account", "requested_by")
        .filter(pk=export_pk, status=Status.READY, expires_at__gt=timezone.now())
        .first()
    )
    if export is None or export.requested_by is None:
        return False
    path = reverse("privacy-export-download", kwargs={"export_id": export.public_id})
    context = {
        "export": export,
        "account": export.account,
        "link": export.site_url.rstrip("/") + path,
    }
    send_email(
        to=export.requested_by.email,
        subject="Your account export is ready",
        template="privacy/email/export_ready.txt",
        context=context,
    )
    logger.info("export email sent", extra={"export_id": export.public_id})
    return True


def forget_expired_sessions(*, now: datetime | None = None) -> int:
    """Delete sign-in sessions past their expiry, and the address and browser allauth keeps
    with each (shown on the sessions page); returns how many sessions went. Nothing else
    removes them: Django leaves that to a `clearsessions` nobody runs."""
    deleted, _ = Session.objects.filter(expire_date__lt=now or timezone.now()).delete()
    UserSession.objects.exclude(session_key__in=Session.objects.values("session_key")).delete()
    return deleted


def delete_unserved_chunks() -> int:
    """Delete the file of every export that will never be downloaded (expired or failed, a
    build presumed lost included); returns how many chunks went."""
    deleted, _ = AccountExportChunk.objects.filter(
        export__status__in=(Status.EXPIRED, Status.FAILED)
    ).delete()
    return deleted


def expire_exports(*, now: datetime | None = None) -> int:
    """Delete the file of every export past its seven days; the row stays, marked expired."""
    now = now or timezone.now()
    expired = AccountExport.objects.filter(status=Status.READY, expires_at__lte=now).update(
        status=Status.EXPIRED
    )
    delete_unserved_chunks()
    if expired:
        logger.info("exports expired", extra={"count": expired})
    return expired


def recover_exports(*, now: datetime | None = None) -> list[int]:
    """Fail builds whose progress stalled (presumed lost with their worker); return the
    pending ones to queue again."""
    now = now or timezone.now()
    AccountExport.objects.filter(
        status=Status.RUNNING, progressed_at__lt=now - BUILD_STALE_AFTER
    ).update(
        status=Status.FAILED,
        finished_at=now,
        error="The export was interrupted. Request a new one.",
    )
    delete_unserved_chunks()  # what the build stored so far; it can store no more
    return list(
        AccountExport.objects.filter(
            status=Status.PENDING, created_at__lt=now - ENQUEUE_LOST_AFTER
        ).values_list("pk", flat=True)[:100]
    )


def _stored_chunks(export: AccountExport) -> Iterator[bytes]:
    """The export's compressed file, one decrypted chunk at a time, each read when needed.

    The chunks are counted first (a ready export has all of its own, numbered from 0): one
    missing later, deleted by an expiry while the download runs, raises ExportCut."""
    chunks = AccountExportChunk.objects.filter(export=export)
    count = chunks.count()
    for sequence in range(count):
        content = chunks.filter(sequence=sequence).values_list("content", flat=True).first()
        if content is None:
            logger.warning(
                "export download cut",
                extra={"export_id": export.public_id, "chunks_served": sequence, "chunks": count},
            )
            raise ExportCut(f"chunk {sequence} of {count} is gone")
        yield encryption.decrypt(content)


def _decompressed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The decompressed stream, in pieces of at most DOWNLOAD_CHUNK_BYTES."""
    inflater = zlib.decompressobj(wbits=31)  # 31: a gzip stream
    for compressed in chunks:
        data = compressed
        while data:
            if piece := inflater.decompress(data, DOWNLOAD_CHUNK_BYTES):
                yield piece
            data = inflater.unconsumed_tail
    if tail := inflater.flush():
        yield tail


def open_export(
    *, export: AccountExport, actor: User, ip_address: str | None = None
) -> Iterator[bytes]:
    """The export's JSON, in chunks, for download; audited. ExportUnavailable if it cannot be;
    ExportCut, midway, if its file goes while it is read."""
    now = timezone.now()
    if export.status == Status.READY and export.expires_at and export.expires_at <= now:
        expire_exports(now=now)  # on access too, not only when the sweep comes round
        export.refresh_from_db()
    if export.status == Status.EXPIRED:
        raise ExportUnavailable(
            "This export expired: exports are kept for seven days. Request a new one."
        )
    if export.status == Status.FAILED:
        raise ExportUnavailable(export.error or "This export failed. Request a new one.")
    if export.status != Status.READY:
        raise ExportUnavailable("This export is not ready yet. You will get an email when it is.")
    chunks = _stored_chunks(export)
    try:
        # The first chunk read now, so a key dropped from the ring is told on the page
        # rather than cutting the download; the chunks were encrypted together.
        first = next(chunks, None)
    except encryption.InvalidToken as error:  # its key was dropped from the ring
        raise ExportUnavailable(
            "This export can no longer be read because the encryption keys changed. "
            "Request a new one."
        ) from error
    if first is None:  # its chunks went meanwhile, or it was built before there were any
        raise ExportUnavailable("This export's file is not available. Request a new one.")
    record_audit_event(
        account=export.account,
        actor=actor,
        action="export",
        target=f"{export.public_id} downloaded",
        ip_address=ip_address,
    )
    logger.info("export downloaded", extra={"export_id": export.public_id})
    return _decompressed(itertools.chain([first], chunks))


def rotate_exports(*, batch_size: int = ROTATION_BATCH_CHUNKS) -> int:
    """Re-encrypt the chunks of stored export files under the primary key; returns how many."""
    return encryption.rotate_stored(AccountExportChunk, ["content"], batch_size=batch_size)
