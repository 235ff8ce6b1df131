"""A process whose REQRUN_ENCRYPTION_KEYS cannot read what the others stored refuses to start.

Such a worker would look healthy and fail every request it took (the body it must send
cannot be decrypted); such a web would answer every page that shows a provider key or a
body with a 500. Both now stop at start-up with a message naming the setting.
"""

import pytest
from cryptography.fernet import Fernet

from core import encryption
from projects.upstreams import set_provider_key
from tests.conftest import ProcfileWeb, WorkerProcess, wait_until
from tests.factories import ProjectFactory, RequestFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stored_secrets():
    project = ProjectFactory()
    set_provider_key(project=project, provider_key="sk-stored-under-the-suite-key")
    return RequestFactory(project=project, request_body=encryption.encrypt(b'{"model": "m"}'))


def test_a_worker_whose_keys_cannot_read_stored_secrets_does_not_start(stored_secrets):
    worker = WorkerProcess(extra_env={"REQRUN_ENCRYPTION_KEYS": Fernet.generate_key().decode()})
    worker.start()
    try:
        wait_until(lambda: worker.process.poll() is not None, timeout=60, message="still up")
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert worker.process.returncode != 0
    assert "REQRUN_ENCRYPTION_KEYS" in log
    assert "sk-stored" not in log


def test_a_web_whose_keys_cannot_read_stored_secrets_does_not_start(stored_secrets, tmp_path):
    web = ProcfileWeb(tmp_path / "web.log", REQRUN_ENCRYPTION_KEYS=Fernet.generate_key().decode())
    try:
        with pytest.raises(AssertionError, match="REQRUN_ENCRYPTION_KEYS"):
            web.start()
    finally:
        web.stop()
    assert web.process.returncode != 0


def test_a_key_ring_being_rotated_still_starts(settings, stored_secrets, tmp_path):
    """The new primary first and the old key after it: what is stored still reads."""
    ring = f"{Fernet.generate_key().decode()},{settings.REQRUN_ENCRYPTION_KEYS[0]}"
    web = ProcfileWeb(tmp_path / "web.log", REQRUN_ENCRYPTION_KEYS=ring)
    try:
        web.start()
        assert web.process.poll() is None
    finally:
        web.stop()
