"""Thin Celery tasks for exports and deletions: ids in, a service call, nothing else."""

from celery import shared_task

from accounts.emails import MAIL_RETRIES, retry_refused
from privacy import deletion, services
from projects import services as project_services
from projects.tasks import purge_deleted_project

# Queued when an account is closed, the purge usually succeeds at once; while an attempt is
# still running it is retried this often, a few times, and then left to the sweep (which
# queues it without follow-ups, once a minute).
PURGE_RETRY_SECONDS = 5
PURGE_RETRIES = 24


@shared_task(acks_late=True, reject_on_worker_lost=True, time_limit=900, soft_time_limit=840)
def build_export(export_pk: int) -> None:
    services.build_export(export_pk=export_pk)


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def send_export_ready_email(self, export_pk: int) -> None:
    retry_refused(lambda: services.send_ready_email(export_pk=export_pk), task=self)


@shared_task(bind=True, acks_late=True, time_limit=900, soft_time_limit=840)
def purge_deleted_account(self, deletion_pk: int, follow_up: bool = True) -> None:
    if deletion.purge_deleted_account(deletion_pk=deletion_pk):
        return
    if follow_up and self.request.retries < PURGE_RETRIES:
        raise self.retry(countdown=PURGE_RETRY_SECONDS, max_retries=PURGE_RETRIES)


@shared_task(time_limit=120, soft_time_limit=100)
def sweep_privacy() -> None:
    """Expire old exports and sessions, queue again what the broker lost, finish pending
    deletions (of accounts and of projects)."""
    services.expire_exports()
    services.forget_expired_sessions()
    for export_pk in services.recover_exports():
        build_export.delay(export_pk)
    for deletion_pk in deletion.due_deletions():
        purge_deleted_account.delay(deletion_pk, follow_up=False)
    for project_pk in project_services.project_deletions_due():
        purge_deleted_project.delay(project_pk, follow_up=False)
