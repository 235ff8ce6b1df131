"""Typed API errors and the one exception handler that renders them in OpenAI's envelope."""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from core.outages import OUTAGE_RETRY_AFTER_SECONDS, is_outage, is_redis_outage, sqlstate
from requests_app import metrics
from requests_app.error_catalog import catalogue_entry

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error with OpenAI's `type` and `code`, and optional extra response headers.

    The status and type of a catalogued code come from the error catalogue, the one table
    that also feeds the docs and the schema; the class's own are the fallback.
    """

    status_code = status.HTTP_400_BAD_REQUEST
    error_type = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        entry = catalogue_entry(cls.code)
        if entry is not None:
            cls.status_code, cls.error_type = entry.status, entry.type

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        request_object: dict | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        entry = catalogue_entry(self.code)
        if entry is not None:
            self.status_code, self.error_type = entry.status, entry.type
        self.param = param
        self.headers = headers or {}
        self.request_object = request_object


class InvalidRequest(ApiError):
    pass


INVALID_KEY_MESSAGE = (
    "Incorrect API key provided. Use a ReqRun key (rr_…) from your project's API keys page "
    "in an 'Authorization: Bearer' header."
)
MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. Send a ReqRun key from your project's API keys page as "
    "'Authorization: Bearer rr_…'."
)


class InvalidApiKey(ApiError):
    status_code = status.HTTP_401_UNAUTHORIZED
    code = "invalid_api_key"


class Suspended(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    error_type = "permission_error"


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT
    code = "request_already_finished"


class BodyTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "request_too_large"


def body_too_large() -> BodyTooLarge:
    return BodyTooLarge(
        f"The request body is larger than {settings.REQRUN_MAX_BODY_BYTES} bytes, the most "
        "ReqRun accepts. Send a smaller body: fewer or shorter messages, or smaller images."
    )


class IdempotencyMismatch(ApiError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "idempotency_key_reused"


class RateLimited(ApiError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_type = "requests"
    code = "rate_limit_exceeded"


class PendingQueueFull(RateLimited):
    code = "pending_queue_full"


class QuotaExceeded(RateLimited):
    error_type = "insufficient_quota"
    code = "monthly_quota_exceeded"


class ServiceUnavailable(ApiError):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error_type = "server_error"
    code = "service_unavailable"


class EncryptionKeyMissing(ApiError):
    """A stored secret the key ring no longer opens (the error catalogue says what to do)."""

    code = "encryption_key_missing"


def outage_error(error: BaseException, *, request_id: str | None = None) -> ServiceUnavailable:
    """The 503 for an outage; with `request_id`, for a caller whose request was accepted."""
    which = "Redis" if is_redis_outage(error) else "database"
    message = f"ReqRun's {which} is unavailable just now; retry shortly."
    headers = {"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)}
    if request_id:
        message = (
            f"ReqRun's {which} is unavailable just now. Request {request_id} was accepted and "
            f"goes on; read it shortly at /v1/requests/{request_id}."
        )
        headers["ReqRun-Request-Id"] = request_id
    unavailable = ServiceUnavailable(message, headers=headers)
    unavailable.__cause__ = error
    return unavailable


class UpstreamError(ApiError):
    status_code = status.HTTP_502_BAD_GATEWAY
    error_type = "upstream_error"


def envelope(
    message: str, *, error_type: str, code: str | None = None, param: str | None = None
) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


DRF_ERRORS = {
    exceptions.NotAuthenticated: ("invalid_request_error", "invalid_api_key"),
    exceptions.AuthenticationFailed: ("invalid_request_error", "invalid_api_key"),
    exceptions.MethodNotAllowed: ("invalid_request_error", "method_not_allowed"),
    exceptions.ParseError: ("invalid_request_error", "invalid_json"),
    exceptions.NotFound: ("invalid_request_error", "not_found"),
    exceptions.PermissionDenied: ("permission_error", "permission_denied"),
    exceptions.Throttled: ("requests", "rate_limit_exceeded"),
}


@metrics.counts_refusals
def openai_exception_handler(exc, context):
    """Every error under /v1, ours or DRF's, in OpenAI's envelope."""
    if isinstance(exc, Http404):
        exc = NotFound("No such object.")
    if isinstance(exc, RequestDataTooBig):
        exc = body_too_large()
    if isinstance(exc, TooManyFieldsSent):  # Django will not parse such a query string
        exc = InvalidRequest(
            f"The query string has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} "
            "parameters; send fewer."
        )
    if is_outage(exc):
        exc = outage_error(exc)
    if isinstance(exc, ServiceUnavailable):
        logger.warning(
            "dependency unavailable",
            extra={
                "view": type(context.get("view")).__name__,
                "exception": type(exc.__cause__).__name__,
                "sqlstate": sqlstate(exc.__cause__) if exc.__cause__ else None,
            },
        )
    if isinstance(exc, ApiError):
        response = Response(
            envelope(exc.message, error_type=exc.error_type, code=exc.code, param=exc.param),
            status=exc.status_code,
        )
        for name, value in exc.headers.items():
            response[name] = value
        if isinstance(exc, ServiceUnavailable):
            response._has_been_logged = True  # at warning, above; not again as an error
        return response
    if isinstance(exc, exceptions.APIException):
        error_type, code = DRF_ERRORS.get(type(exc), ("invalid_request_error", None))
        status_code = exc.status_code
        if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
            status_code = status.HTTP_401_UNAUTHORIZED
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response = Response(envelope(detail, error_type=error_type, code=code), status=status_code)
        if isinstance(exc, exceptions.Throttled) and exc.wait:
            response["Retry-After"] = str(int(exc.wait))
        return response
    logger.exception("unhandled API error", extra={"view": type(context.get("view")).__name__})
    return Response(
        envelope(
            "ReqRun had an internal error. It has been logged; please retry.",
            error_type="server_error",
            code="internal_error",
        ),
        status=status.HTTP_500_INTERNAL_SERVER_ERROR,
    )
