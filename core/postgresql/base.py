"""Django's PostgreSQL backend, never handing out a pooled connection the server has closed.

A PostgreSQL restart ends every connection the processes keep in their pools. Drawn as they
are, each dead one fails the request that draws it (up to the pool's size, per process).
Django's own check (CONN_HEALTH_CHECKS) sends an empty query, a round trip on every
checkout, several per request, and psycopg's pool then waits with a growing backoff
(1 s, 2 s, 4 s...) after each connection that fails it. A connection the server ended has
already said so on its socket (the termination notice, then end of file): looking at the
socket without waiting tells, at no round trip, and a dead one is dropped at once.
"""

import select

from django.db.backends.postgresql import base


def closed_by_server(connection) -> bool:
    """Whether the server has sent anything on this idle connection: in autocommit with
    nothing asked, that can only be its goodbye."""
    return bool(select.select([connection.pgconn.socket], [], [], 0)[0])


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        if not self.pool:
            return connection
        # Every pooled connection may be dead at once; a fresh one replaces each dropped.
        for _ in range(self.pool.max_size):
            if not closed_by_server(connection):
                break
            connection.close()
            self.pool.putconn(connection)  # a closed connection is discarded and replaced
            connection = super().get_new_connection(conn_params)
        return connection
