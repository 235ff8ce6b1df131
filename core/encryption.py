"""The key ring for secrets at rest: provider keys and request/response bodies.

REQRUN_ENCRYPTION_KEYS lists Fernet keys, primary first. Anything encrypted under an
older key still decrypts; `manage.py rotate_encryption_keys` re-encrypts it all under the
primary so the old key can be dropped from the ring.
"""

import logging
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models, transaction

__all__ = [
    "InvalidToken",
    "decrypt",
    "decrypt_stored",
    "encrypt",
    "log_unreadable",
    "newest_unreadable",
    "rotate",
    "rotate_stored",
]

logger = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _ring(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def key_ring() -> MultiFernet:
    return _ring(tuple(settings.REQRUN_ENCRYPTION_KEYS))


def encrypt(plaintext: bytes) -> bytes:
    return key_ring().encrypt(plaintext)


def decrypt(token: bytes) -> bytes:
    return key_ring().decrypt(bytes(token))


def decrypt_stored(token: bytes | memoryview, **about: str) -> bytes | None:
    """A stored value decrypted, or None when no key in the ring opens it: the key it was
    encrypted under left REQRUN_ENCRYPTION_KEYS before `rotate_encryption_keys` re-encrypted
    it, or an old backup was restored. The start-up check reads only the newest rows, so an
    older one is met here; the warning names it by `about` (ids), never by the token."""
    try:
        return decrypt(token)
    except InvalidToken:
        log_unreadable(**about)
        return None


def log_unreadable(**about: object) -> None:
    """The operator's warning for a stored value no key in the ring opens, by ids only."""
    logger.warning("stored value cannot be decrypted", extra=about)


def rotate(token: bytes) -> bytes:
    return key_ring().rotate(bytes(token))


def rotate_stored(model: type[models.Model], fields: list[str], *, batch_size: int) -> int:
    """Re-encrypt `fields` of every row that has one under the primary key; returns the rows.

    Batches of locked rows in primary-key order: no transaction holds the table for long,
    and a row written meanwhile (a new provider key, a finished request) waits for its
    batch rather than being overwritten with an older value or skipped, which would leave
    it readable only with the key about to be dropped.
    """
    stored = models.Q()
    for field in fields:
        stored |= models.Q(**{f"{field}__isnull": False})
    rotated, last_pk = 0, 0
    while True:
        with transaction.atomic():
            batch = list(
                model.objects.select_for_update()
                .filter(stored, pk__gt=last_pk)
                .order_by("pk")
                .only("pk", *fields)[:batch_size]
            )
            if not batch:
                return rotated
            for row in batch:
                for field in fields:
                    if (token := getattr(row, field)) is not None:
                        setattr(row, field, rotate(token))
            model.objects.bulk_update(batch, fields)
        rotated += len(batch)
        last_pk = batch[-1].pk


def newest_unreadable(model: type[models.Model], field: str, *, among: int = 100) -> bool:
    """Whether the newest value of `field` stored in `model`'s newest `among` rows is one
    this process's key ring cannot decrypt (False when none of them holds one).

    Bounded to the newest rows so a table of finished requests, whose bodies are gone,
    is not walked end to end at start-up.
    """
    newest = model.objects.order_by("-pk").values("pk")[:among]
    token = (
        model.objects.filter(pk__in=models.Subquery(newest), **{f"{field}__isnull": False})
        .order_by("-pk")
        .values_list(field, flat=True)
        .first()
    )
    if token is None:
        return False
    try:
        decrypt(token)
    except InvalidToken:
        return True
    return False
