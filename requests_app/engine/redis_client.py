"""One Redis client per process for the request engine's own keys.

Django's cache is bound to the current async context, so under ASGI every request would
get a new cache object and a new connection; this client and its pool live as long as the
process and are shared by its threads.
"""

import threading

import redis
from django.conf import settings

_client: redis.Redis | None = None
_making = threading.Lock()


def client() -> redis.Redis:
    global _client
    if _client is None:
        # Made once, under a lock: threads that each made one would overwrite all but one,
        # and redis-py closes a collected client's pool, sockets in use by others included.
        with _making:
            if _client is None:
                _client = redis.Redis.from_url(
                    settings.REDIS_URL,
                    socket_timeout=5,
                    socket_connect_timeout=2,
                    health_check_interval=30,
                    max_connections=500,
                )
    return _client
