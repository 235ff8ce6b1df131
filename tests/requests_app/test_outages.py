"""An outage of ReqRun's own PostgreSQL or Redis is answered honestly: a 503 in OpenAI's
envelope with `Retry-After`, or the 202 a waiting caller is owed, never a 500 of our own."""

import threading

import httpx
import pytest
from django.db import (
    DataError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    connection,
    transaction,
)

from devstack.servers import EmbeddedRedis, free_port
from requests_app.errors import openai_exception_handler
from requests_app.models import Request
from tests.conftest import ProcfileWeb, wait_until
from tests.factories import AttemptFactory
from tests.outage import database_outage, outage_web
from tests.requests_app.conftest import Tenant

CHAT = [{"role": "user", "content": "outage"}]


@pytest.fixture
def web(tmp_path, transactional_db):
    """The web process with a short pool timeout, as an operator may configure it."""
    server = outage_web(tmp_path / "web.log", DB_POOL_TIMEOUT="2").start()
    yield server
    server.stop()


@pytest.fixture
def customer(transactional_db, fake_upstream):
    fake_upstream.reset()
    return Tenant(email="alice@example.com", upstream_url=fake_upstream.base_url)


def post_chat(url: str, customer: Tenant, model: str = "gpt-test", **headers) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": CHAT},
        headers={"Authorization": f"Bearer {customer.raw_key}", **headers},
        timeout=60,
    )


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "service_unavailable"
    assert "retry" in error["message"].lower()
    assert 1 <= int(response.headers["Retry-After"]) <= 10


@pytest.mark.timeout(120)
def test_calls_during_a_database_outage_get_a_503_to_retry(web, customer):
    assert post_chat(web.url, customer, Prefer="respond-async").status_code == 202

    with database_outage():
        # The first calls find the pool's cut connections; later ones find none to be had.
        answers = [post_chat(web.url, customer, Prefer="respond-async") for _ in range(4)]
        listing = httpx.get(
            f"{web.url}/v1/requests",
            headers={"Authorization": f"Bearer {customer.raw_key}"},
            timeout=60,
        )

    for response in [*answers, listing]:
        assert_unavailable(response)
    assert Request.objects.count() == 1  # nothing was recorded during the outage
    log = web.log_path.read_text()
    assert "unhandled API error" not in log
    assert "dependency unavailable" in log


@pytest.mark.timeout(120)
def test_calls_while_redis_is_down_get_a_503_to_retry(customer, tmp_path):
    redis = EmbeddedRedis(tmp_path / "redis", free_port())
    redis.start()
    web = ProcfileWeb(tmp_path / "web.log", REDIS_URL=redis.url).start()
    try:
        assert post_chat(web.url, customer, Prefer="respond-async").status_code == 202
        redis.stop()

        response = post_chat(web.url, customer, Prefer="respond-async")
    finally:
        web.stop()
        redis.stop()

    assert_unavailable(response)
    assert "unhandled API error" not in web.log_path.read_text()


def waiting_callers(web: ProcfileWeb) -> float:
    metrics = httpx.get(f"{web.url}/metrics").text
    return next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("reqrun_waiting_callers ")
    )


class Call(threading.Thread):
    """One HTTP call in a thread, so the test can start an outage while it waits."""

    def __init__(self, method: str, url: str, customer: Tenant, **kwargs):
        super().__init__(daemon=True)
        self.method, self.url, self.kwargs = method, url, kwargs
        self.kwargs["headers"] = {
            **kwargs.get("headers", {}),
            "Authorization": f"Bearer {customer.raw_key}",
        }
        self.response: httpx.Response | None = None

    def run(self):
        self.response = httpx.request(self.method, self.url, timeout=60, **self.kwargs)

    def result(self) -> httpx.Response:
        self.join(60)
        assert self.response is not None, "the call never ended"
        return self.response


@pytest.mark.timeout(120)
def test_a_waiting_caller_whose_budget_ends_in_an_outage_gets_its_202(web, customer):
    # The upstream takes far longer than the budget, should a worker pick the request up.
    body = {"model": "sleep-30000", "messages": CHAT}
    # Neither finishes, whether or not a worker (the session's) picks them up.
    polled_id = post_chat(web.url, customer, "sleep-30000", Prefer="respond-async").json()["id"]
    poll = Call("GET", f"{web.url}/v1/requests/{polled_id}?wait=4", customer)
    waiting = Call(
        "POST", f"{web.url}/v1/chat/completions", customer, json=body, headers={"ReqRun-Wait": "4"}
    )
    poll.start()
    waiting.start()
    wait_until(lambda: waiting_callers(web) == 2, message="the callers never waited")
    request = Request.objects.exclude(public_id=polled_id).get(model="sleep-30000")

    with database_outage():
        waited = waiting.result()
        polled = poll.result()

    assert waited.status_code == 202, waited.text
    assert waited.headers["ReqRun-Request-Id"] == request.public_id
    assert waited.headers["Location"] == f"/v1/requests/{request.public_id}"
    assert waited.json()["id"] == request.public_id
    assert waited.json()["status"] == "queued"
    assert polled.status_code == 503, polled.text  # the poll's answer needs a read
    assert polled.json()["error"]["code"] == "service_unavailable"


@pytest.mark.timeout(120)
def test_a_caller_attached_to_a_running_request_learns_its_id_in_an_outage(web, customer):
    body = {"model": "sleep-30000", "messages": CHAT}
    key = {"Idempotency-Key": "attach-in-an-outage"}
    first = post_chat(web.url, customer, "sleep-30000", **key, Prefer="respond-async")
    request = Request.objects.get(public_id=first.json()["id"])
    # A worker has the request: its 202 body lists the attempt, which takes a read. The
    # session's worker may have claimed it already; if not, the claim is made here.
    if Request.objects.filter(pk=request.pk, status="queued").update(
        status="running", attempt_count=1
    ):
        AttemptFactory(request=request, number=1, outcome="", status_code=None)
    attached = Call(
        "POST",
        f"{web.url}/v1/chat/completions",
        customer,
        json=body,
        headers={**key, "ReqRun-Wait": "4"},
    )
    attached.start()
    wait_until(lambda: waiting_callers(web) == 1, message="the attached caller never waited")

    with database_outage():
        response = attached.result()

    assert response.status_code == 503, response.text
    assert response.headers["ReqRun-Request-Id"] == request.public_id
    assert request.public_id in response.json()["error"]["message"]


def raised_by(sql: str) -> Exception:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = 50")
            cursor.execute(sql)
    except Exception as error:  # noqa: BLE001 - the error is what the test is about
        return error
    raise AssertionError(f"{sql!r} raised nothing")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1 / 0", DataError),
        (
            "INSERT INTO django_migrations (id, app, name, applied) "
            "SELECT id, app, name, applied FROM django_migrations LIMIT 1",
            IntegrityError,
        ),
        ("SELECT * FROM no_such_table", ProgrammingError),
    ],
)
def test_database_errors_that_are_not_an_outage_stay_ours(sql, kind):
    error = raised_by(sql)
    assert isinstance(error, kind)

    response = openai_exception_handler(error, {"view": None})

    assert response.status_code == 500
    assert response.data["error"]["code"] == "internal_error"


@pytest.mark.django_db
def test_a_statement_canceled_by_the_deployments_timeout_is_a_503_to_retry():
    # statement_timeout is the operator's: a slow database, not a bug of ReqRun's.
    error = raised_by("SELECT pg_sleep(1)")
    assert isinstance(error, OperationalError)

    response = openai_exception_handler(error, {"view": None})

    assert response.status_code == 503
    assert response.data["error"]["code"] == "service_unavailable"
