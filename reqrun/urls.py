"""URL wiring: public pages, allauth, the dashboard under /app/, the API under /v1, admin."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from core import health

urlpatterns = [
    path("", include("requests_app.api.urls")),  # /v1 first: the hot path resolves at once
    path("", TemplateView.as_view(template_name="pages/landing.html"), name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("legal/terms", TemplateView.as_view(template_name="legal/terms.html"), name="legal-terms"),
    path(
        "legal/privacy",
        TemplateView.as_view(template_name="legal/privacy.html"),
        name="legal-privacy",
    ),
    path(
        "legal/refunds",
        TemplateView.as_view(template_name="legal/refunds.html"),
        name="legal-refunds",
    ),
    path("accounts/", include("allauth.urls")),
    path("app/", include("accounts.urls")),
    path("app/", include("projects.urls")),
    path("app/", include("privacy.urls")),
    path("", include("billing.urls")),
    path("", include("requests_app.dashboard.urls")),
    path("admin/", admin.site.urls),
]
