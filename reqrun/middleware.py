"""Middleware wiring: async-capable static files, security headers, the CSP header and
no-store for signed-in pages. (The 503 page in an outage is `core.error_pages`.)"""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.middleware.security import SecurityMiddleware as DjangoSecurityMiddleware
from whitenoise.middleware import WhiteNoiseMiddleware


class SecurityMiddleware(DjangoSecurityMiddleware):
    """Django's security headers and HTTPS redirect, with the hooks run inline under ASGI.

    For the /v1 stack. MiddlewareMixin would run each hook through a thread hop; these two
    only read settings and set headers, so the hops are pure cost on every API call. (The
    browser stack keeps Django's own class, the one `check --deploy` looks for.)
    """

    async def __acall__(self, request):
        response = self.process_request(request) or await self.get_response(request)
        return self.process_response(request, response)


def streamed_asynchronously(response):
    """WhiteNoise answers with a file read in blocks by a synchronous iterator. Django's
    ASGI handler reads such a body whole in a thread and warns (a line in the web's log,
    once per process); handed the blocks asynchronously it sends them as they are read.
    The files are the dashboard's own few kilobytes on local disk, so a block's read does
    not hold the event loop up."""
    if not response.streaming or response.is_async:
        return response
    blocks = response.streaming_content

    async def read():
        for block in blocks:
            yield block

    response.streaming_content = read()
    return response


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _static_file(self, request):
        if self.autorefresh:
            return self.find_file(request.path_info)
        return self.files.get(request.path_info)

    def _answer(self, static_file, request):
        response = self.serve(static_file, request)
        # The browser stack has sync-only middleware, so this often runs synchronously even
        # under ASGI: the request says which handler will send the body.
        if isinstance(request, ASGIRequest):
            return streamed_asynchronously(response)
        return response

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        static_file = self._static_file(request)
        if static_file is not None:
            return self._answer(static_file, request)
        return self.get_response(request)

    async def __acall__(self, request):
        static_file = self._static_file(request)
        if static_file is not None:
            return self._answer(static_file, request)
        return await self.get_response(request)


class ContentSecurityPolicyMiddleware:
    """Adds the Content-Security-Policy from settings: our own origin plus Paddle.js only."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = settings.CONTENT_SECURITY_POLICY
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _add_header(self, response):
        response.headers.setdefault("Content-Security-Policy", self.policy)
        return response

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return self._add_header(self.get_response(request))

    async def __acall__(self, request):
        return self._add_header(await self.get_response(request))


class NoStoreWhenSignedInMiddleware:
    """Signed-in pages show prompts, answers, keys and invoices: `Cache-Control: no-store`
    keeps them out of the browser's and any proxy's cache, unless the view chose a header
    itself. Public pages (for visitors) and static files (answered before this) stay
    cacheable.

    Sync only, like the allauth middleware after it: the browser stack runs synchronously
    from there, so this adds no thread hop."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        # The header first: the outage page sets its own, and asking who is signed in would
        # read the session again from the database that just failed.
        if "Cache-Control" in response.headers:
            return response
        # DRF leaves `user` None on a view without authentication (the schema, under a
        # test client's browser stack); such a view sets its own header if it needs one.
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            response.headers["Cache-Control"] = "no-store"
        return response
