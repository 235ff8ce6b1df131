"""Django's PostgreSQL backend, with a check on each connection the pool hands out.

A PostgreSQL restart ends every connection the processes keep in their pools. Without a
check, each dead one fails the request that draws it (up to the pool's size, per process,
for as long as it takes to draw them all). Django's own check (CONN_HEALTH_CHECKS) sends an
empty query: a round trip on every checkout, several per request. A connection the server
ended has already said so on its socket (the termination notice, then end of file), so
looking at the socket without waiting is enough, and costs no round trip.
"""

import select

from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base
from psycopg import OperationalError
from psycopg_pool import ConnectionPool


def closed_by_server(connection) -> None:
    """Raise (and close it) if the server has sent anything on an idle connection: in
    autocommit with nothing asked, that can only be its goodbye. The pool then opens a new
    one in its place."""
    if select.select([connection.pgconn.socket], [], [], 0)[0]:
        connection.close()
        raise OperationalError("the server closed this connection")


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        """Django's pool, built as Django builds it, with `closed_by_server` as its check."""
        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias != NO_DB_ALIAS and options and self.alias not in self._connection_pools:
            pool = ConnectionPool(
                kwargs={**self.get_connection_params(), "autocommit": True},
                open=False,
                configure=self._configure_connection,
                check=closed_by_server,
                **({} if options is True else options),
            )
            self._connection_pools.setdefault(self.alias, pool)
        return super().pool
