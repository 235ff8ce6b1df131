"""Python's cyclic garbage collector, set for a long-running server process.

A web or worker process starts with some 150,000 objects that Django, Celery and their
libraries keep for the life of the process (modules, classes, URL patterns, settings).
With the collector's defaults every full collection walks all of them again: under load,
a pause of ~100 ms every few seconds in which no thread of the process runs (every
waiting caller and every attempt in flight stands still), and with the young collections
4-8 % of the process's CPU. `settle()` runs once the process has started: it collects
what start-up left over and freezes the rest (`gc.freeze`), so later collections skip it,
and it makes young collections rarer, so fewer of a request's short-lived objects are
still alive, and walked, when one runs. Reference cycles, the only garbage the collector
itself frees, then wait for a larger batch: a few megabytes at most.
"""

import gc
import logging

logger = logging.getLogger(__name__)

# A young collection after this many new container objects (Python's default is 700);
# the older generations keep their defaults.
YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Freeze what start-up left alive and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    logger.info("start-up objects frozen", extra={"count": gc.get_freeze_count()})
