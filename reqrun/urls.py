"""URL wiring: public pages, allauth, the dashboard under /app/, the API under /v1, admin."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from accounts import health
from accounts import views as account_views

urlpatterns = [
    path("", TemplateView.as_view(template_name="pages/landing.html"), name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("legal/terms", TemplateView.as_view(template_name="legal/terms.html"),
         name="legal-terms"),
    path("legal/privacy", TemplateView.as_view(template_name="legal/privacy.html"),
         name="legal-privacy"),
    path("legal/refunds", TemplateView.as_view(template_name="legal/refunds.html"),
         name="legal-refunds"),
    path("pricing", TemplateView.as_view(template_name="pages/pricing.html"), name="pricing"),
    path("docs", TemplateView.as_view(template_name="pages/docs.html"), name="docs"),
    path("accounts/", include("allauth.urls")),
    path("app/", account_views.dashboard, name="dashboard"),
    path("app/switch-account", account_views.switch_account, name="switch-account"),
    path("admin/", admin.site.urls),
]
