"""Thin Celery tasks for projects: ids in, a service call, nothing else."""

from celery import shared_task

from accounts.emails import MAIL_RETRIES, retry_refused
from projects import services, upstreams

# Queued when a project is deleted, its purge waits out the grace and then usually succeeds;
# while one of its requests is still running it is retried this often, a few times, and
# then left to the privacy sweep (which queues it without follow-ups, once a minute).
PURGE_RETRY_SECONDS = 5
PURGE_RETRIES = 24


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def email_owners_about_upstream_move(
    self, move_pk: int, owner_ids: list[int] | None = None
) -> None:
    retry_refused(
        lambda: upstreams.email_owners_about_move(move_pk=move_pk, owner_ids=owner_ids),
        task=self,
    )


@shared_task(bind=True, acks_late=True, time_limit=900, soft_time_limit=840)
def purge_deleted_project(self, project_pk: int, follow_up: bool = True) -> None:
    if services.purge_deleted_project(project_pk=project_pk):
        return
    if follow_up and self.request.retries < PURGE_RETRIES:
        raise self.retry(countdown=PURGE_RETRY_SECONDS, max_retries=PURGE_RETRIES)
