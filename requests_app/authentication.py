"""Bearer ReqRun keys for /v1: who is calling, and may their account and project call now."""

from rest_framework.authentication import BaseAuthentication

from projects.models import ApiKey
from projects.services import authenticate_api_key
from requests_app.errors import InvalidApiKey, Suspended

INVALID_KEY_MESSAGE = (
    "Incorrect API key provided. Use a ReqRun key (rr_…) from your project's API keys page "
    "in an 'Authorization: Bearer' header."
)


def api_key_from_header(authorization: str) -> ApiKey:
    """The active key named by an Authorization header, or InvalidApiKey / Suspended."""
    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise InvalidApiKey("You didn't provide an API key. " + INVALID_KEY_MESSAGE)
    api_key = authenticate_api_key(raw.strip())
    if api_key is None:
        raise InvalidApiKey(INVALID_KEY_MESSAGE)
    account = api_key.project.account
    if account.is_suspended:
        raise Suspended("This account is suspended. Contact support@reqrun.com.",
                        code="account_suspended")
    if api_key.project.is_suspended:
        raise Suspended("This project is suspended. Contact support@reqrun.com.",
                        code="project_suspended")
    return api_key


class ApiKeyAuthentication(BaseAuthentication):
    """DRF authentication: `request.auth` is the ApiKey; `request.user` stays anonymous."""

    def authenticate(self, request):
        return None, api_key_from_header(request.META.get("HTTP_AUTHORIZATION", ""))

    def authenticate_header(self, request):
        return 'Bearer realm="reqrun"'
