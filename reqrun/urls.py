"""URL wiring: public pages, allauth, the dashboard under /app/, the API under /v1, admin."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from core import health
from core.metrics import metrics_view
from privacy import legal
from requests_app.api.urls import unknown_paths
from requests_app.metrics import RequestQueueCollector, UpstreamBreakerCollector

urlpatterns = [
    path("", include("requests_app.api.urls")),  # /v1 first: the hot path resolves at once
    path("", TemplateView.as_view(template_name="pages/landing.html"), name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path(
        "metrics",
        metrics_view(collectors=[RequestQueueCollector(), UpstreamBreakerCollector()]),
        name="metrics",
    ),
    path("legal/terms", legal.terms, name="legal-terms"),
    path("legal/privacy", legal.privacy_policy, name="legal-privacy"),
    path("legal/refunds", legal.refunds, name="legal-refunds"),
    path(".well-known/security.txt", legal.security_txt, name="security-txt"),
    path("accounts/", include("allauth.urls")),
    path("app/", include("accounts.urls")),
    path("app/", include("projects.urls")),
    path("app/", include("privacy.urls")),
    path("", include("billing.urls")),
    path("", include("requests_app.dashboard.urls")),
    path("admin/", admin.site.urls),
    *unknown_paths,
]

# Django's 500 and 400 pages, or in an outage of the database or Redis met anywhere (a view,
# a middleware) the 503 page. /v1 answers its own errors in OpenAI's envelope
# (requests_app.errors).
handler500 = "core.error_pages.server_error_page"
handler400 = "core.error_pages.bad_request_page"
