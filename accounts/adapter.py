"""allauth glue: allauth's rate limits and sessions see the same client address as our audit
events (`accounts.access.client_ip`), whichever server runs the app; every form that takes an
email address refuses one longer than the database keeps or one no mail can be sent to; a mail
server that is down or slow shows a message instead of breaking the page."""

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core import context, ratelimit
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest
from django.utils.encoding import punycode

from accounts.access import client_ip
from accounts.emails import MAIL_ERRORS, kind_of, log_unsent
from accounts.models import User

EMAIL_MAX_LENGTH = User._meta.get_field("email").max_length


# A sign-up with a taken address must read like any other (no enumeration), and so must a
# reset for an unknown one.
VERIFICATION_UNSENT = (
    "We could not send the verification email just now. Sign in with your email and "
    "password in a few minutes and we will send a new link."
)
RESET_UNSENT = "We could not send the email just now. Please ask again in a few minutes."
SENT_MESSAGE = "account/messages/email_confirmation_sent.txt"
UNSENT_MESSAGES = {
    "verification": VERIFICATION_UNSENT,
    "account_already_exists": VERIFICATION_UNSENT,
    "password_reset": RESET_UNSENT,
    "unknown_account": RESET_UNSENT,
}


def validate_mailable_email(email: str) -> None:
    """Django's email validator takes a domain that IDNA cannot encode (a label that is empty
    or too long once encoded, such as a lone soft hyphen), and sending mail to it raises."""
    domain = email.rpartition("@")[2]
    if domain.isascii():
        return
    try:
        punycode(domain)
    except UnicodeError:
        raise ValidationError(
            "No email can be sent to this address: its domain is not a valid name. "
            "Check it for typos."
        ) from None


class AccountAdapter(DefaultAccountAdapter):
    def get_client_ip(self, request: HttpRequest) -> str:
        address = client_ip(request)
        if address is None:
            raise PermissionDenied("Unable to determine the client's address.")
        return address

    def clean_email(self, email: str) -> str:
        """Sign-up, adding an address and password reset all pass through here. Django's form
        field allows 320 characters, the database 254: left alone, allauth cuts a longer
        address short on sign-up and the insert of an added one fails."""
        if len(email) > EMAIL_MAX_LENGTH:
            raise ValidationError(
                f"Email addresses can be at most {EMAIL_MAX_LENGTH} characters; "
                "use a shorter address."
            )
        validate_mailable_email(email)
        return super().clean_email(email)

    def send_mail(self, template_prefix: str, email: str, context_: dict) -> None:
        try:
            super().send_mail(template_prefix, email, context_)
        except MAIL_ERRORS as error:
            kind = kind_of(template_prefix)
            log_unsent(kind=kind, error=error)
            request = context.request
            if request is None:  # not a page's send (a shell, a command): let it raise
                raise
            # Nothing went out: the next sign-in may send a link without the cooldown.
            ratelimit.clear(request, action="confirm_email", key=email.lower())
            messages.error(
                request, UNSENT_MESSAGES.get(kind, "We could not send the email just now.")
            )
            request.reqrun_mail_unsent = True

    def add_message(self, request, level, message_template=None, *args, **kwargs) -> None:
        """allauth says "Confirmation email sent to …" after the send whatever became of it:
        not after one that failed, whose page already says it could not be sent."""
        if message_template == SENT_MESSAGE and getattr(request, "reqrun_mail_unsent", False):
            return
        super().add_message(request, level, message_template, *args, **kwargs)
