"""An outage of ReqRun's own PostgreSQL or Redis is answered honestly: a 503 in OpenAI's
envelope with `Retry-After`, or the 202 a waiting caller is owed, never a 500 of our own.

The web runs as its own process (the Procfile's line), so its connection pool and Redis
client are its own: the outage cuts exactly its database sessions (named by their
application_name), and the test's own connection, like the session's worker, keeps its.
"""

from contextlib import contextmanager

import httpx
import psycopg
import pytest
from django.db import DataError, IntegrityError, OperationalError, connection, transaction

from devstack.servers import EmbeddedRedis, free_port
from requests_app.errors import openai_exception_handler
from requests_app.models import Request
from tests.conftest import ProcfileWeb
from tests.conftest import test_database_url as database_url_for_tests
from tests.requests_app.conftest import Tenant

CHAT = [{"role": "user", "content": "outage"}]
WEB_DATABASE_NAME = "reqrun-outage-web"  # PostgreSQL's application_name of the web's sessions


@contextmanager
def database_outage():
    """The database refuses new connections and the web's open ones are cut, as when the
    server stops. PostgreSQL takes that only from a session on another database."""
    params = connection.settings_dict
    name = connection.ops.quote_name(params["NAME"])
    with psycopg.connect(
        host=params["HOST"],
        port=params["PORT"],
        user=params["USER"],
        password=params["PASSWORD"],
        dbname="postgres",
        autocommit=True,
    ) as admin:
        admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = %s",
                [params["NAME"], WEB_DATABASE_NAME],
            )
            yield
        finally:
            admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")


@pytest.fixture
def web(tmp_path, transactional_db):
    """The web process with a short pool timeout, as an operator may configure it."""
    server = ProcfileWeb(
        tmp_path / "web.log",
        DATABASE_URL=f"{database_url_for_tests()}?application_name={WEB_DATABASE_NAME}",
        DB_POOL_TIMEOUT="2",
    ).start()
    yield server
    server.stop()


@pytest.fixture
def customer(transactional_db, fake_upstream):
    fake_upstream.reset()
    return Tenant(email="alice@example.com", upstream_url=fake_upstream.base_url)


def post_chat(url: str, customer: Tenant, **headers) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": CHAT},
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
        ("SELECT pg_sleep(1)", OperationalError),  # a cancelled statement: not an outage
    ],
)
def test_database_errors_that_are_not_an_outage_stay_ours(sql, kind):
    error = raised_by(sql)
    assert isinstance(error, kind)

    response = openai_exception_handler(error, {"view": None})

    assert response.status_code == 500
    assert response.data["error"]["code"] == "internal_error"
