"""The key ring for secrets at rest: provider keys and request/response bodies.

REQRUN_ENCRYPTION_KEYS lists Fernet keys, primary first. Anything encrypted under an
older key still decrypts; `manage.py rotate_encryption_keys` re-encrypts it all under the
primary so the old key can be dropped from the ring.
"""

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

__all__ = ["InvalidToken", "decrypt", "encrypt", "rotate"]


@lru_cache(maxsize=4)
def _ring(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def key_ring() -> MultiFernet:
    return _ring(tuple(settings.REQRUN_ENCRYPTION_KEYS))


def encrypt(plaintext: bytes) -> bytes:
    return key_ring().encrypt(plaintext)


def decrypt(token: bytes) -> bytes:
    return key_ring().decrypt(bytes(token))


def rotate(token: bytes) -> bytes:
    return key_ring().rotate(bytes(token))
