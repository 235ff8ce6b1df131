"""A lease on a long job (a purge), kept in a datetime column of the row the job is about:
one run at a time holds it and renews it as it goes; a run that died lets it run out, and
the next run then takes it over."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone


class Lease:
    """The lease in column `field` of the one row `row` selects, `length` long."""

    def __init__(self, row: QuerySet, *, field: str, length: timedelta):
        self.row = row
        self.field = field
        self.length = length
        self.until: datetime | None = None  # while this run holds it: when it runs out

    @contextmanager
    def held(self) -> Iterator[bool]:
        """Take the lease for the block, if it is free or has run out; the block gets False
        when another run holds it. Let go at the end, an error's included: the next run
        need not wait for it to run out."""
        now = timezone.now()
        self._write(Q(**{f"{self.field}__isnull": True}) | Q(**{f"{self.field}__lt": now}))
        try:
            yield self.until is not None
        finally:
            if self.until is not None:
                self.row.filter(**{self.field: self.until}).update(**{self.field: None})
                self.until = None

    def renew(self) -> bool:
        """Extend the lease this run holds; False if it ran out and another run took it."""
        return self.until is not None and self._write(Q(**{self.field: self.until}))

    def _write(self, free: Q) -> bool:
        until = timezone.now() + self.length
        if not self.row.filter(free).update(**{self.field: until}):
            return False
        self.until = until
        return True
