"""Middleware wiring: async-capable static files and the Content-Security-Policy header."""

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from whitenoise.middleware import WhiteNoiseMiddleware


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

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        static_file = self._static_file(request)
        if static_file is not None:
            return self.serve(static_file, request)
        return self.get_response(request)

    async def __acall__(self, request):
        static_file = self._static_file(request)
        if static_file is not None:
            return self.serve(static_file, request)
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
