"""Deleting many rows (a deleted account's or project's requests, records past their
retention) without one statement holding locks on a busy table for long."""

from collections.abc import Callable

from django.db import transaction
from django.db.models import QuerySet


def delete_in_batches(
    rows: QuerySet,
    *,
    batch_size: int,
    skip_locked: bool = False,
    before_delete: Callable[[QuerySet], None] | None = None,
) -> int:
    """Delete `rows` a batch at a time, in their order (one an index serves, so that each
    batch is a short read), each in its own transaction; how many went.

    Each batch is locked before anything of it is deleted (its children by the cascade
    included), so two purges that want the same rows never each hold half of them (a
    deadlock): one waits for the other, then finds them gone; with `skip_locked` it
    leaves them to the other instead. `before_delete` runs on the locked batch first."""
    deleted = 0
    while True:
        with transaction.atomic():
            pks = list(
                rows.select_for_update(skip_locked=skip_locked).values_list("pk", flat=True)[
                    :batch_size
                ]
            )
            if not pks:
                return deleted
            batch = rows.model.objects.filter(pk__in=pks)
            if before_delete is not None:
                before_delete(batch)
            batch.delete()
        deleted += len(pks)
