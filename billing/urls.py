from django.urls import path

from billing import views

urlpatterns = [
    path("pricing", views.pricing, name="pricing"),
    path("billing/paddle/webhook", views.paddle_webhook, name="paddle-webhook"),
    path("app/billing/", views.billing, name="billing"),
    path("app/billing/cancel", views.cancel, name="billing-cancel"),
    path("app/billing/resume", views.resume, name="billing-resume"),
    path("app/billing/change-plan", views.change_plan, name="billing-change-plan"),
    path("app/billing/checkout", views.start_checkout, name="billing-checkout"),
    path("app/billing/portal", views.portal, name="billing-portal"),
    path(
        "app/billing/invoices/<pid:transaction_id>/pdf", views.invoice_pdf, name="billing-invoice"
    ),
]
