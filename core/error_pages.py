"""The pages for a request that failed (handler500, handler400): Django's, or the 503 page
when what failed is an outage of ReqRun's database or Redis, wherever it was met: in a
view, in a middleware (the session, who is signed in) or in another error page."""

import logging
import sys

from django.contrib.sessions.exceptions import SessionInterrupted
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.views.defaults import bad_request, server_error

from core.outages import OUTAGE_RETRY_AFTER_SECONDS, is_outage, sqlstate

logger = logging.getLogger(__name__)


def outage_page(request: HttpRequest, error: BaseException) -> HttpResponse:
    """The 503 page for `error`, an outage, logged once at warning with the error's class
    only, not as a server error with its traceback."""
    logger.warning(
        "dependency unavailable",
        extra={
            "path": request.path,
            "exception": type(error).__name__,
            "sqlstate": sqlstate(error),
        },
    )
    # Rendered without the request: the layout would read the session and the user, from
    # the database that is away.
    response = HttpResponse(render_to_string("503.html"), status=503)
    response["Retry-After"] = str(OUTAGE_RETRY_AFTER_SECONDS)
    # Never cached; set here, it also spares the middleware that sets it for signed-in pages
    # from reading the session again from the store that just failed.
    response["Cache-Control"] = "no-store"
    response._has_been_logged = True  # at warning, above; Django's log_response skips it
    return response


def server_error_page(request: HttpRequest) -> HttpResponse:
    """Django calls this while it handles the exception, so `sys.exc_info()` holds it.
    (With DEBUG on, Django shows its technical page instead and never calls this.)"""
    error = sys.exc_info()[1]
    if error is not None and is_outage(error):
        return outage_page(request, error)
    return server_error(request)


def bad_request_page(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's session middleware answers 400 for a session it could not save, as if
    another request had deleted it meanwhile, also when the database refused the write
    (read-only after a failover, a statement canceled): that is an outage."""
    if isinstance(exception, SessionInterrupted):
        # Raised while handling UpdateError, itself raised while handling the write's error.
        update_error = exception.__context__
        refusal = update_error.__context__ if update_error is not None else None
        if refusal is not None and is_outage(refusal):
            return outage_page(request, refusal)
    return bad_request(request, exception)
