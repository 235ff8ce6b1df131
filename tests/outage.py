"""A PostgreSQL outage for one web process, without stopping the suite's shared server.

The web runs as its own process (the Procfile's line) whose database sessions carry an
application_name of their own: the outage refuses every new connection to the test
database and cuts that web's sessions, while the test's connection, and the session's
worker, keep theirs.
"""

from contextlib import contextmanager
from pathlib import Path

import psycopg
from django.db import connection

from tests.conftest import ProcfileWeb
from tests.conftest import test_database_url as database_url_for_tests

WEB_DATABASE_NAME = "reqrun-outage-web"


def outage_web(log_path: Path, **env: str) -> ProcfileWeb:
    """A web process whose database sessions `database_outage` cuts."""
    url = f"{database_url_for_tests()}?application_name={WEB_DATABASE_NAME}"
    return ProcfileWeb(log_path, DATABASE_URL=url, **env)


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
