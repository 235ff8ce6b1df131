"""allauth glue: allauth's rate limits and sessions see the same client address as our audit
events (`accounts.access.client_ip`), whichever server runs the app; every form that takes an
email address refuses one longer than the database keeps or one no mail can be sent to."""

from allauth.account.adapter import DefaultAccountAdapter
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest
from django.utils.encoding import punycode

from accounts.access import client_ip
from accounts.models import User

EMAIL_MAX_LENGTH = User._meta.get_field("email").max_length


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
