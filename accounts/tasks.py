"""Thin Celery tasks for accounts: ids in, a service call, nothing else."""

from celery import shared_task

from accounts import services
from accounts.emails import MAIL_RETRIES, retry_refused
from accounts.models import User


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def send_welcome_email(self, user_pk: int) -> None:
    user = User.objects.filter(pk=user_pk).first()
    if user is None:
        return
    retry_refused(lambda: services.send_welcome_email(user=user), task=self)


@shared_task(bind=True, time_limit=120, soft_time_limit=100, max_retries=MAIL_RETRIES)
def send_second_factor_removed_email(
    self, user_pk: int, removed_at: int, second_factor_left: int
) -> None:
    user = User.objects.filter(pk=user_pk).first()
    if user is None:
        return
    retry_refused(
        lambda: services.send_second_factor_removed_email(
            user=user, removed_at=removed_at, second_factor_left=bool(second_factor_left)
        ),
        task=self,
    )
