"""The full stack for API tests: uvicorn serving the ASGI app, a real worker, a fake upstream."""

import asyncio
import socket
import threading
import time
from datetime import datetime

import openai
import pytest
import uvicorn
from django.utils import timezone

from accounts.services import create_account
from core import encryption
from projects.limits import set_plan
from projects.models import AccountPlan
from projects.services import create_api_key, create_project
from projects.upstreams import set_provider_key
from requests_app.api.ratelimit import WINDOW_SECONDS
from requests_app.engine import sql
from requests_app.models import Attempt, Request
from tests.conftest import WorkerProcess
from tests.factories import UserFactory
from tests.fake_upstream import FakeUpstream


class LiveServer:
    """The project's ASGI application under uvicorn on a loopback port, in a thread."""

    def __init__(self):
        from reqrun.asgi import application

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        config = uvicorn.Config(
            application, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.run(self.server.serve())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.thread.start()
        from tests.conftest import wait_until

        wait_until(lambda: self.server.started, timeout=20, message="uvicorn did not start")
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_api(django_db_setup):
    server = LiveServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_upstream():
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="session")
def worker(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        process = WorkerProcess(
            concurrency=24,
            # A short wait for a pooled connection, so an outage outlasts it in seconds.
            extra_env={"REQRUN_LEASE_GRACE_SECONDS": "1", "DB_POOL_TIMEOUT": "3"},
        )
        process.start()
    yield process
    process.stop()


class Tenant:
    """An account with a project wired to the fake upstream and a fresh ReqRun key."""

    def __init__(self, *, email: str, upstream_url: str, plan: str = "enterprise", **policy):
        self.user = UserFactory(email=email)
        self.account = create_account(owner=self.user)
        set_plan(account=self.account, plan_code=plan)
        self.project = create_project(
            account=self.account, name="Default", upstream_base_url=upstream_url
        )
        for field, value in policy.items():
            setattr(self.project, field, value)
        self.project.save()
        set_provider_key(project=self.project, provider_key="sk-test-provider-key-1234")
        self.api_key, self.raw_key = create_api_key(project=self.project, name="test")

    def override(self, **limits):
        AccountPlan.objects.filter(account=self.account).update(**limits)

    def client(self, base_url: str, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=f"{base_url}/v1", api_key=self.raw_key, **kwargs)


@pytest.fixture
def tenant(transactional_db, fake_upstream, live_api, worker):
    fake_upstream.reset()
    return Tenant(
        email="alice@example.com", upstream_url=fake_upstream.base_url, attempt_timeout_seconds=5
    )


@pytest.fixture
def other_tenant(transactional_db, fake_upstream):
    return Tenant(email="charlie@example.com", upstream_url=fake_upstream.base_url)


@pytest.fixture
def sdk(tenant, live_api) -> openai.OpenAI:
    return tenant.client(live_api.url, timeout=60)


def in_one_rate_limit_window(seconds: float = 5) -> None:
    """Wait, if need be, until the rate limit's window (a minute by the clock) has `seconds`
    left: the calls a test makes within them are all counted in that one window."""
    while time.time() % WINDOW_SECONDS > WINDOW_SECONDS - seconds:
        time.sleep(0.1)


def start_first_attempt(request: Request, **columns) -> datetime:
    """Play the worker: `request` claimed for its first attempt (with `columns` set too) and
    that attempt's row opened; when."""
    now = timezone.now()
    Request.objects.filter(pk=request.pk).update(status="running", attempt_count=1, **columns)
    Attempt.objects.create(request=request, number=1, upstream="primary", started_at=now)
    return now


REFUSAL = b'{"error": {"message": "refused", "type": "invalid_request_error"}}'


def end_first_attempt_refused(request: Request, now: datetime) -> bool:
    """Play the worker: the upstream refused the first attempt with a 400, which ends the
    request with that answer; whether the conclusion applied."""
    return sql.conclude(
        request_id=request.pk,
        number=1,
        now=now,
        attempt={"outcome": "fatal_error", "status_code": 400},
        status="failed",
        ends=True,
        response={
            "response_status_code": 400,
            "response_headers": {"content-type": "application/json"},
            "response_body": encryption.encrypt(REFUSAL),
        },
    )
