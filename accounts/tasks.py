"""Thin Celery tasks for accounts: ids in, a service call, nothing else."""

from celery import shared_task

from accounts import services
from accounts.emails import MAIL_ERRORS, MAIL_RETRIES, mail_retry_countdown
from accounts.models import User


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def send_welcome_email(self, user_pk: int) -> None:
    user = User.objects.filter(pk=user_pk).first()
    if user is None:
        return
    try:
        services.send_welcome_email(user=user)
    except MAIL_ERRORS:
        # Retried without the error: its text can hold the address, and Celery logs it.
        raise self.retry(countdown=mail_retry_countdown(self.request.retries)) from None
