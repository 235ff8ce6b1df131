"""The page for a request that failed (handler500): the 500 page, or the 503 page when what
failed is an outage of ReqRun's database or Redis, wherever it was met: in a view, in a
middleware (the session, who is signed in) or in another error page."""

import logging
import sys

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.views.defaults import server_error

from core.outages import OUTAGE_RETRY_AFTER_SECONDS, is_outage, sqlstate

logger = logging.getLogger(__name__)


def server_error_page(request: HttpRequest) -> HttpResponse:
    """Django calls this while it handles the exception, so `sys.exc_info()` holds it.

    An outage answers 503 with `Retry-After`, logged once at warning with the error's class
    only, not as a server error with its traceback. (With DEBUG on, Django shows its
    technical page instead and never calls this.)"""
    error = sys.exc_info()[1]
    if error is None or not is_outage(error):
        return server_error(request)
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
    response._has_been_logged = True  # at warning, above; Django's log_response skips it
    return response
