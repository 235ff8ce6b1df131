"""Shared fixtures: devstack starts the real servers; these add a worker and the usual users."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import psycopg
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection, transaction
from django.db.models.signals import pre_save
from django.test import TransactionTestCase
from psycopg.errors import DeadlockDetected

from core import heartbeats
from tests.factories import PASSWORD, AccountFactory, MembershipFactory, UserFactory

ROOT = Path(__file__).resolve().parent.parent
CELERY = [sys.executable, "-m", "celery", "-A", "reqrun"]
# The site's pages for visitors: product, docs and legal.
PUBLIC_PAGES = [
    "/",
    "/pricing",
    "/docs",
    "/docs/api",
    "/docs/errors",
    "/docs/failover",
    "/legal/terms",
    "/legal/privacy",
    "/legal/refunds",
]


class OneIterationPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """The production hasher at one iteration instead of a million: each password the tests
    set or check (every user a factory makes, every sign-in) took 0.2 s, half the set-up of
    an ordinary test. Its hashes keep the `pbkdf2_sha256$<iterations>$…` form, so processes
    the tests start (web, worker), which hash with the settings' hasher, still check them."""

    iterations = 1


def pytest_configure(config):
    from django.conf import settings

    settings.PASSWORD_HASHERS = [
        f"{OneIterationPBKDF2PasswordHasher.__module__}.{OneIterationPBKDF2PasswordHasher.__name__}"
    ]


def record_every_heartbeat() -> None:
    """The sweeper and a worker seen just now: /readyz then judges only what a test breaks."""
    for name in heartbeats.WATCHED:
        heartbeats.record(name)


def wait_until(condition, *, timeout: float = 30, interval: float = 0.05, message: str = ""):
    """Poll `condition` until it returns something truthy; fail with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout}s")


def waiting_for_a_lock() -> int:
    """How many connections to the test database are waiting for a lock just now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


FLUSH_ATTEMPTS = 3


def at_once(count: int, call):
    """`call()` from `count` threads released at the same moment, each on its own database
    connection (closed after): what each returned."""
    start = threading.Barrier(count)
    results = []

    def one():
        try:
            start.wait()
            results.append(call())
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether `error`, or an exception it was raised from or while handling, is a `kind`."""
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def _flush_retried_on_deadlock(fixture_teardown):
    """A transactional test ends with one TRUNCATE of every table. A worker still running a
    task the test left behind may hold one of those tables while it waits for another the
    TRUNCATE holds; PostgreSQL then aborts one side, and when it is the flush the test
    errors at teardown. The aborted TRUNCATE changed nothing, so it is run again."""

    def teardown(self):
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            try:
                return fixture_teardown(self)
            except Exception as error:
                if attempt == FLUSH_ATTEMPTS or not caused_by(error, DeadlockDetected):
                    raise

    return teardown


TransactionTestCase._fixture_teardown = _flush_retried_on_deadlock(
    TransactionTestCase._fixture_teardown
)


def separate_redis_db(number: int) -> str:
    """The suite's Redis, another database number: the session's shared worker consumes the
    default one and must not take tasks a test leaves behind (they name rows the test's
    teardown is about to flush, and running them then can deadlock with the flush)."""
    return os.environ["REDIS_URL"].rsplit("/", 1)[0] + f"/{number}"


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an exited process nobody has reaped yet)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_database_url() -> str:
    """The URL of pytest-django's test database, for processes the tests start."""
    params = connection.settings_dict
    return f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"


def server_url(database: str) -> str:
    params = connection.settings_dict
    return f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{database}"


def fresh_database(stack: ExitStack) -> str:
    """A new, empty database on the suite's PostgreSQL, dropped at the end."""
    name = f"reqrun_deploy_{uuid.uuid4().hex[:8]}"
    admin_url = server_url("postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop():
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    return server_url(name)


def raised_while_held(hold, act) -> Exception | None:
    """What `act()` raised (None if nothing) when it ran while `hold()`'s transaction was
    still open: `hold` runs in a thread, in a transaction kept open until `act`, in
    another thread, has had half a second to run into its locks. For races that need a
    transactional test (each thread has its own connection)."""
    held, release, outcome = threading.Event(), threading.Event(), {}

    def holder():
        with transaction.atomic():
            hold()
            held.set()
            release.wait(10)
        connection.close()

    def actor():
        try:
            act()
        except Exception as error:  # what the second one ended with is the observation
            outcome["error"] = error
        finally:
            connection.close()

    holding = threading.Thread(target=holder)
    holding.start()
    assert held.wait(10), "the first transaction never got going"
    acting = threading.Thread(target=actor)
    acting.start()
    acting.join(0.5)
    release.set()
    holding.join(10)
    acting.join(10)
    return outcome.get("error")


class WorkerProcess:
    """A real `celery worker` subprocess against the real broker and the test database."""

    def __init__(
        self, *, concurrency: int = 8, extra_env: dict | None = None, log_path: Path | None = None
    ):
        self.concurrency = concurrency
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None
        self.log_path = log_path or ROOT / ".data" / f"test-worker-{os.getpid()}.log"

    def start(self) -> "WorkerProcess":
        self.log_path.parent.mkdir(exist_ok=True)
        env = {**os.environ, "DATABASE_URL": test_database_url(), **self.extra_env}
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def command(self) -> list[str]:
        return [
            *CELERY,
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(self.concurrency),
            "-Q",
            "requests,default",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ]

    def log_since(self, offset: int) -> str:
        """What the worker has logged past `offset` (a size its log had earlier)."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def logged_since(self, offset: int, *parts: str) -> bool:
        """Whether one line the worker logged past `offset` holds all of `parts`."""
        lines = self.log_since(offset).splitlines()
        return any(all(part in line for part in parts) for line in lines)

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would: no cleanup, no acks."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()


class ProcfileWeb:
    """The Procfile's `web` line exactly as written, on a free loopback port, against the
    test database, with its output in `log_path`."""

    def __init__(self, log_path: Path, **env: str):
        from devstack.__main__ import read_procfile
        from devstack.servers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = read_procfile()["web"]
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "DATABASE_URL": test_database_url(),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> "ProcfileWeb":
        import httpx

        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(  # noqa: S602 - a Procfile line is a shell command
            self.command,
            shell=True,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def healthy():
            assert self.process.poll() is None, self.log_path.read_text(errors="replace")
            try:
                return httpx.get(f"{self.url}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=60, interval=0.2, message="the web process never answered")
        return self

    def terminate(self) -> None:
        """SIGTERM, as a deploy or a scale-down sends it."""
        os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then wait for the server itself: the shell running the Procfile line may
        fork it rather than exec it, and exits first."""
        if self.process and self.process.poll() is None:
            shell = psutil.Process(self.process.pid)
            tree = [shell, *shell.children(recursive=True)]
            self.terminate()
            try:
                wait_until(
                    lambda: not any(running(p) for p in tree), timeout=30, message="still up"
                )
            except AssertionError:
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if getattr(self, "log", None):
            self.log.close()


class BeatProcess(WorkerProcess):
    """A real `celery beat` subprocess with the Procfile's settings."""

    def command(self) -> list[str]:
        return [*CELERY, "beat", "--loglevel", "INFO"]


@pytest.fixture
def celery_worker(transactional_db):
    worker = WorkerProcess().start()
    yield worker
    worker.stop()


def reauthenticate(client) -> None:
    """Give the signed-in user's password again, as changing emails asks (allauth keeps it
    for five minutes)."""
    response = client.post("/accounts/reauthenticate/", {"password": PASSWORD})
    assert response.status_code == 302, response.content.decode()[:500]


@pytest.fixture
def alice(db):
    """Owner of the account `alice_account`."""
    return UserFactory(email="alice@example.com")


@pytest.fixture
def alice_account(alice):
    account = AccountFactory(name="Alice's workspace")
    MembershipFactory(user=alice, account=account, role="owner")
    return account


@pytest.fixture
def bob(alice_account):
    """A plain member of alice's account."""
    user = UserFactory(email="bob@example.com")
    MembershipFactory(user=user, account=alice_account, role="member")
    return user


@pytest.fixture
def charlie(db):
    """Another tenant entirely."""
    user = UserFactory(email="charlie@example.com")
    account = AccountFactory(name="Charlie's workspace")
    MembershipFactory(user=user, account=account, role="owner")
    return user


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Rate-limit windows live in the shared Redis cache; each test starts with none."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _plans(request):
    """Transactional tests flush every table, the seeded plans included: put them back."""
    if "transactional_db" in request.fixturenames or "live_server" in request.fixturenames:
        from projects.models import Plan
        from projects.plans import seed_plans

        request.getfixturevalue("transactional_db")
        if not Plan.objects.exists():
            seed_plans(Plan)


def delete_in_admin(client, row) -> int:
    """Try to delete `row` in the admin, on its delete page and with the list's bulk action;
    the status the delete page answered."""
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
    from django.urls import reverse

    admin_name = f"admin:{row._meta.app_label}_{row._meta.model_name}"
    page = client.post(reverse(f"{admin_name}_delete", args=[row.pk]), {"post": "yes"})
    client.post(
        reverse(f"{admin_name}_changelist"),
        {"action": "delete_selected", ACTION_CHECKBOX_NAME: [row.pk], "post": "yes"},
    )
    return page.status_code


def sign_in_to_admin(client, user) -> None:
    """Password, then an authenticator code: what the admin requires of staff."""
    from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
    from django.urls import reverse

    from tests.accounts.test_two_factor import current_code, sign_in_with_password, stored_secret

    TOTP.activate(user, generate_totp_secret())
    sign_in_with_password(client, user, next_url="/admin/")
    client.post(reverse("mfa_authenticate"), {"code": current_code(stored_secret(user))})


@contextmanager
def written_meanwhile(model, pk, **values):
    """Another writer's UPDATE of a row (a webhook's, the user's own), landing while the code
    under test saves it: after that code read the row, just before its write."""

    def write(sender, instance, **kwargs):
        if instance.pk == pk:
            model.objects.filter(pk=pk).update(**values)

    pre_save.connect(write, sender=model, weak=False)
    try:
        yield
    finally:
        pre_save.disconnect(write, sender=model)


@pytest.fixture
def operator_client(client, db):
    """A superuser signed in to the admin with both factors."""
    sign_in_to_admin(client, UserFactory(email="ops@reqrun.com", is_staff=True, is_superuser=True))
    return client
