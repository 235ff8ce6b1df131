"""Every kind of email ReqRun sends, in one registry: the privacy policy lists it and a test
holds it equal to the email templates in the code."""

import logging
import smtplib
from collections.abc import Callable
from dataclasses import dataclass

from celery import Task
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmailKind:
    name: str
    # Our own templates by path; allauth's by the prefix it adds `_subject.txt`/`_message.txt` to.
    templates: tuple[str, ...]
    recipients: str
    sent_when: str


EMAIL_KINDS: dict[str, EmailKind] = {
    "verification": EmailKind(
        "Email address verification",
        ("account/email/email_confirmation_signup", "account/email/email_confirmation"),
        "the address being verified",
        "at sign-up, and again when you ask for a new link or sign in before verifying",
    ),
    "password_reset": EmailKind(
        "Password reset",
        ("account/email/password_reset_key",),
        "the address the reset was asked for",
        "when someone asks to reset the password of that address",
    ),
    "welcome": EmailKind(
        "Welcome",
        ("accounts/email/welcome.txt",),
        "the new user",
        "once, after the address is verified",
    ),
    "second_factor_removed": EmailKind(
        "Two-factor sign-in removed",
        ("accounts/email/second_factor_removed.txt",),
        "the user whose second factor was removed",
        "when ReqRun support removes your authenticator app or recovery codes (after you lost "
        "your phone, say), saying when and what to do if you did not ask for it",
    ),
    "invitation": EmailKind(
        "Team invitation",
        ("projects/email/invitation.txt",),
        "the invited address, which may not belong to a ReqRun user yet",
        "when an owner or admin invites someone to an account",
    ),
    "usage_notice": EmailKind(
        "Usage notice",
        ("billing/email/usage_notice.txt",),
        "the account's owners",
        "when the account reaches 80 % and 100 % of its monthly requests, once each per month "
        "(again for the new quota if the plan changes during the month)",
    ),
    "payment_failed": EmailKind(
        "Payment failed",
        ("billing/email/payment_failed.txt",),
        "the account's owners",
        "when Paddle tells us a renewal payment for the subscription failed (not for a card "
        "declined at checkout, which Paddle's checkout shows at once)",
    ),
    "past_due": EmailKind(
        "Payment past due",
        ("billing/email/past_due.txt",),
        "the account's owners",
        "when the subscription becomes past due, with the date the paid plan ends if unpaid",
    ),
    "duplicate_subscription_canceled": EmailKind(
        "Second subscription canceled",
        ("billing/email/duplicate_subscription_canceled.txt",),
        "the account's owners",
        "when two checkouts were paid for one account and the second subscription was "
        "canceled at once, so that Paddle does not bill twice",
    ),
    "upstream_host_changed": EmailKind(
        "Upstream host changed",
        ("projects/email/upstream_host_changed.txt",),
        "the account's owners",
        "when a project's upstream is moved to another host, naming who moved it and from "
        "which IP address, and whether the stored provider key was cleared",
    ),
    "export_ready": EmailKind(
        "Account export ready",
        ("privacy/email/export_ready.txt",),
        "the owner who asked for the export",
        "when an account export has been built and can be downloaded",
    ),
}

# allauth sends these only when it must not reveal whether an address has an account.
ENUMERATION_SAFE_EMAIL_KINDS: dict[str, EmailKind] = {
    "unknown_account": EmailKind(
        "No account at this address",
        ("account/email/unknown_account",),
        "an address that has no ReqRun account",
        "when someone asks for a password reset for it",
    ),
    "account_already_exists": EmailKind(
        "Account already exists",
        ("account/email/account_already_exists",),
        "an address that already has a ReqRun account",
        "when someone tries to sign up with it again",
    ),
}


def email_kinds() -> dict[str, EmailKind]:
    """The kinds this deployment sends, given how allauth is configured."""
    if getattr(settings, "ACCOUNT_PREVENT_ENUMERATION", True):
        return {**EMAIL_KINDS, **ENUMERATION_SAFE_EMAIL_KINDS}
    return dict(EMAIL_KINDS)


def kind_of(template: str) -> str:
    """The registry's name for the kind of email sent with `template`."""
    for name, kind in {**EMAIL_KINDS, **ENUMERATION_SAFE_EMAIL_KINDS}.items():
        if template in kind.templates:
            return name
    return "unknown"


# What a send raises when the mail server refuses, hangs (EMAIL_TIMEOUT) or rejects: smtplib's
# errors, refused connections and timeouts are all OSErrors.
MAIL_ERRORS = (OSError,)


def refused_for_good(error: BaseException) -> bool:
    """The mail server answered 5xx to this message's recipient or data: sending it again
    would be refused again. A 4xx, a refused connection, a timeout, or a 5xx to the sender,
    the greeting or the login (the same for every message, and put right on our side) may
    pass later."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in error.recipients.values())
    return isinstance(error, smtplib.SMTPDataError) and error.smtp_code >= 500


class UsersStillOwed(OSError):
    """A send to several users stopped by a refusal that may pass: the ids of the users not
    reached yet (the refused one first), for a retry that sends to them alone. One of
    MAIL_ERRORS."""

    def __init__(self, user_ids: list[int]):
        super().__init__("email not sent to every user")
        self.user_ids = user_ids


def log_unsent(*, kind: str, error: BaseException) -> None:
    """Metadata only: the kind and the error's class. The error's text can hold the address."""
    logger.warning("email not sent", extra={"kind": kind, "error": type(error).__name__})


def send_email(*, to: str, subject: str, template: str, context: dict) -> None:
    """One plain email from one of our `template`s to one address, "[ReqRun]" before its
    subject. A send the mail server refused is logged by its kind (`kind_of`) and raises
    (MAIL_ERRORS), for the caller to undo what it must and for a retry."""
    try:
        send_mail(
            subject=f"[ReqRun] {subject}",
            message=render_to_string(template, context),
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=[to],
        )
    except MAIL_ERRORS as error:
        log_unsent(kind=kind_of(template), error=error)
        raise


# An email the mail server refused is retried by its task after 1, 2, 4 … minutes, at most an
# hour apart: about a day in all.
MAIL_RETRIES = 30


def mail_retry_countdown(retries: int) -> int:
    return min(3600, 60 * 2**retries)


def _still_owed(error: BaseException) -> dict[str, list[int]]:
    """The task's keyword arguments that make its retry send only to the owners not reached
    yet (`owner_ids`, which the task hands on to `email_owners`); none if nobody was."""
    return {"owner_ids": error.user_ids} if isinstance(error, UsersStillOwed) else {}


def send_or_retry(send: Callable[[], object], *, task: Task, ids: tuple[int, ...]) -> None:
    """Send an email now; if the mail server refuses it (not for good: `refused_for_good`),
    queue `task(*ids)`, which sends it again from the rows those ids name (`retry_refused`),
    to the owners not reached yet if some were (`owner_ids=`). Ids (and counts the email
    states) only: an address, a link or a body in the broker's message would end up in its
    logs."""
    try:
        send()
    except MAIL_ERRORS as error:  # logged by the send
        if refused_for_good(error):
            return  # sent again, it would be refused again
        task.apply_async(ids, _still_owed(error), countdown=mail_retry_countdown(0))


def send_or_retry_on_commit(
    send: Callable[[], object], *, task: Task, ids: tuple[int, ...]
) -> None:
    """`send_or_retry` once the change the email tells of is committed: a refused send never
    undoes the change nor turns the page or task that made it into an error (nor does a
    broker that cannot take the retry just then: robust, that is logged)."""
    transaction.on_commit(lambda: send_or_retry(send, task=task, ids=ids), robust=True)


def retry_refused(send: Callable[[], object], *, task: Task) -> None:
    """In a bound task: send, and if the mail server refuses (not for good), retry the task on
    the schedule, for the owners not reached yet if some were (`owner_ids=`): nobody gets it
    twice."""
    try:
        send()
    except MAIL_ERRORS as error:
        if refused_for_good(error):
            return  # logged by the send; sent again, it would be refused again
        # Retried without the error: its text can hold an address, and Celery logs it.
        raise task.retry(
            kwargs={**(task.request.kwargs or {}), **_still_owed(error)},
            countdown=mail_retry_countdown(task.request.retries),
        ) from None
