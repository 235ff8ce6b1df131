"""Two-factor secrets at rest: allauth.mfa stores TOTP secrets and recovery-code seeds through
this adapter, encrypted with the key ring, and `manage.py rotate_encryption_keys` re-encrypts
them under its primary key. A secret under a key that has since left the ring (dropped before
the rotation ran, or an old backup restored) is said so to the user and logged for the
operator: accounts.forms for a code, accounts.middleware for the two-factor pages."""

from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.mfa.models import Authenticator
from django.db import transaction

from core import encryption

UNREADABLE_SECRET = (
    "Two-factor sign-in cannot be checked right now. Please contact support@reqrun.com."
)

# Every Fernet token starts so (version byte 0x80, then the timestamp's high bytes). A TOTP
# secret (base32, upper case) or a recovery-code seed (hex) never does, so a value written
# before encryption was turned on is told apart from a token without guessing.
TOKEN_PREFIX = "gAAAAA"


def is_encrypted(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX)


class SecretUnreadable(Exception):
    """No key in REQRUN_ENCRYPTION_KEYS opens a stored two-factor secret. allauth meets it deep
    in its own code; whoever catches it knows the user and calls `log_unreadable`."""


def log_unreadable(user_id: int) -> None:
    encryption.log_unreadable(user_id=user_id, stored="two_factor_secret")


class EncryptedMFAAdapter(DefaultMFAAdapter):
    error_messages = {**DefaultMFAAdapter.error_messages, "secret_unreadable": UNREADABLE_SECRET}

    def encrypt(self, text: str) -> str:
        return encryption.encrypt(text.encode()).decode("ascii")

    def decrypt(self, encrypted_text: str) -> str:
        if not is_encrypted(encrypted_text):
            # Stored in the clear before this adapter: still works, and the next key
            # rotation encrypts it.
            return encrypted_text
        try:
            return encryption.decrypt(encrypted_text.encode("ascii")).decode()
        except encryption.InvalidToken:
            raise SecretUnreadable from None


def _rotated(text: str) -> str:
    if is_encrypted(text):
        return encryption.rotate(text.encode("ascii")).decode("ascii")
    return encryption.encrypt(text.encode()).decode("ascii")


def _rotate_data(data: dict) -> dict:
    """An authenticator's data with every secret allauth encrypts under the primary key."""
    rotated = dict(data)
    for field in ("secret", "seed"):  # TOTP's secret, recovery codes' seed
        if isinstance(data.get(field), str):
            rotated[field] = _rotated(data[field])
    if isinstance(data.get("migrated_codes"), list):  # codes imported from another library
        rotated["migrated_codes"] = [_rotated(code) for code in data["migrated_codes"]]
    return rotated


def rotate_authenticator_secrets(*, batch_size: int = 500) -> int:
    """Re-encrypt every authenticator's secrets under the primary key (and encrypt any stored
    in the clear); returns how many authenticators. Locked batches in primary-key order, as
    core.encryption.rotate_stored does, so a code being used meanwhile waits for its batch."""
    rotated, last_pk = 0, 0
    while True:
        with transaction.atomic():
            batch = list(
                Authenticator.objects.select_for_update()
                .filter(pk__gt=last_pk)
                .order_by("pk")
                .only("pk", "data")[:batch_size]
            )
            if not batch:
                return rotated
            for authenticator in batch:
                authenticator.data = _rotate_data(authenticator.data)
            Authenticator.objects.bulk_update(batch, ["data"])
        rotated += len(batch)
        last_pk = batch[-1].pk
