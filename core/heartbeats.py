"""When the background processes last showed signs of life, and how old is too old.

The sweeper records a heartbeat at the end of every sweep; workers record theirs from the
watchdog's canary and from beat's heartbeat task. /readyz and the admin index read them.
The timestamps live in Redis (the Django cache), so every web process sees the same facts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

SWEEPER = "sweeper"
WORKER = "worker"
WATCHED = (SWEEPER, WORKER)


def stale_after(name: str) -> float:
    """Seconds without a heartbeat after which `name` counts as not running: the one rule."""
    if name == SWEEPER:
        # Several missed sweeps, not one slow one.
        return max(30.0, 10 * settings.REQRUN_SWEEP_INTERVAL_SECONDS)
    # A worker's canary beats every REQRUN_WATCHDOG_INTERVAL_SECONDS; a worker whose consumer
    # is gone exits after REQRUN_WATCHDOG_TIMEOUT_SECONDS and should be back well within twice.
    return max(60.0, 2 * settings.REQRUN_WATCHDOG_TIMEOUT_SECONDS)


def key(name: str) -> str:
    return f"heartbeat:{name}"


def record(name: str, *, at: float | None = None) -> None:
    """Note that `name` ran now (or at the Unix time `at`)."""
    cache.set(key(name), time.time() if at is None else at, timeout=None)


@dataclass(frozen=True)
class Heartbeat:
    name: str
    age_seconds: float | None  # None: never seen
    stale_after_seconds: float

    @property
    def stale(self) -> bool:
        return self.age_seconds is None or self.age_seconds > self.stale_after_seconds


def current() -> list[Heartbeat]:
    """Every watched process's heartbeat; raises if Redis cannot be read."""
    now = time.time()
    seen = cache.get_many([key(name) for name in WATCHED])
    beats = []
    for name in WATCHED:
        at = seen.get(key(name))
        age = max(0.0, now - at) if at is not None else None
        beats.append(Heartbeat(name=name, age_seconds=age, stale_after_seconds=stale_after(name)))
    return beats
