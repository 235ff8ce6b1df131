"""Thin Celery tasks for projects: ids in, a service call, nothing else."""

from celery import shared_task

from accounts.emails import MAIL_RETRIES, retry_refused
from projects import upstreams


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def email_owners_about_upstream_move(
    self, move_pk: int, owner_ids: list[int] | None = None
) -> None:
    retry_refused(
        lambda: upstreams.email_owners_about_move(move_pk=move_pk, owner_ids=owner_ids),
        task=self,
    )
