"""Thin Celery tasks for accounts: ids in, a service call, nothing else."""

from celery import shared_task

from accounts import services
from accounts.emails import MAIL_ERRORS
from accounts.models import User

# A welcome the mail server refused is tried again after 1, 2, 4 … minutes, at most an hour
# apart, for about a day.
WELCOME_RETRIES = 30
WELCOME_FIRST_RETRY_SECONDS = 60
WELCOME_MAX_RETRY_SECONDS = 3600


def welcome_retry_countdown(retries: int) -> int:
    return min(WELCOME_MAX_RETRY_SECONDS, WELCOME_FIRST_RETRY_SECONDS * 2**retries)


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=WELCOME_RETRIES)
def send_welcome_email(self, user_pk: int) -> None:
    user = User.objects.filter(pk=user_pk).first()
    if user is None:
        return
    try:
        services.send_welcome_email(user=user)
    except MAIL_ERRORS:
        # Retried without the error: its text can hold the address, and Celery logs it.
        raise self.retry(countdown=welcome_retry_countdown(self.request.retries)) from None
