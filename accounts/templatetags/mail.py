"""Where this deployment's emails go, for pages that send the reader to one."""

from django import template
from django.conf import settings

register = template.Library()

CONSOLE = "django.core.mail.backends.console.EmailBackend"


@register.simple_tag
def emails_printed() -> bool:
    """Whether emails are printed by the process instead of sent: the console backend, which
    development uses when EMAIL_URL is unset (with DEBUG off, settings refuse to start so)."""
    return settings.EMAIL_BACKEND == CONSOLE
