"""The errors that mean a store is unreachable (down, restarting, out of connections), as
opposed to one refusing what was asked of it: callers wait, retry or answer 503 on these."""

from django.db import InterfaceError, OperationalError

# Django wraps psycopg's connection failures, and psycopg_pool's PoolTimeout, in these.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
