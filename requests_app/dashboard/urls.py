"""Dashboard pages for requests and usage under /app/, the docs, and the OpenAPI schema."""

from django.urls import path
from drf_spectacular.views import SpectacularJSONAPIView

from requests_app.api.schema import SCHEMA_URL
from requests_app.dashboard import views

urlpatterns = [
    path("app/requests/", views.requests_home, name="requests-home"),
    path("app/projects/<pid:project_id>/requests/", views.request_list, name="request-list"),
    path("app/requests/<pid:request_id>/", views.request_detail, name="request-detail"),
    path("app/requests/<pid:request_id>/cancel", views.request_cancel, name="request-cancel"),
    path("app/usage/", views.usage, name="usage"),
    path("docs", views.docs_quickstart, name="docs"),
    path("docs/api", views.docs_api, name="docs-api"),
    path("docs/errors", views.docs_errors, name="docs-errors"),
    path("docs/failover", views.docs_failover, name="docs-failover"),
    path(SCHEMA_URL.lstrip("/"), SpectacularJSONAPIView.as_view(), name="openapi-schema"),
]
