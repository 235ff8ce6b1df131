"""Celery tasks for billing: thin, ids (and a usage notice's counts) only; the services hold
the logic."""

from celery import shared_task

from accounts.emails import MAIL_RETRIES, retry_refused
from billing import services, webhooks
from billing.event_retention import purge_old_events
from billing.selectors import webhook_event_ids_to_retry


@shared_task(time_limit=60, soft_time_limit=50)
def process_webhook_event(event_pk: int) -> None:
    webhooks.process_event(event_pk=event_pk)


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def email_owners_about_event(self, event_pk: int, owner_ids: list[int] | None = None) -> None:
    retry_refused(
        lambda: webhooks.email_owners_about(event_pk=event_pk, owner_ids=owner_ids), task=self
    )


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def email_owners_about_duplicate(
    self, canceled_pk: int, kept_pk: int, owner_ids: list[int] | None = None
) -> None:
    retry_refused(
        lambda: services.email_owners_about_duplicate(
            canceled_pk=canceled_pk, kept_pk=kept_pk, owner_ids=owner_ids
        ),
        task=self,
    )


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def email_owners_about_usage(
    self, usage_pk: int, used: int, quota: int, owner_ids: list[int] | None = None
) -> None:
    retry_refused(
        lambda: services.email_owners_about_usage(
            usage_pk=usage_pk, used=used, quota=quota, owner_ids=owner_ids
        ),
        task=self,
    )


@shared_task(time_limit=300, soft_time_limit=280)
def send_usage_notices() -> int:
    return services.send_usage_notices()


@shared_task(time_limit=300, soft_time_limit=280)
def sweep_billing() -> None:
    """Re-queue events whose task was lost or whose retry is due; end expired grace periods;
    delete events past their retention."""
    for event_pk in webhook_event_ids_to_retry():
        process_webhook_event.delay(event_pk)
    services.enforce_past_due_grace()
    purge_old_events()
