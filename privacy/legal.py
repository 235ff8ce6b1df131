"""The legal pages and /.well-known/security.txt, rendered from the code and plan data they
describe, so a changed limit or a new kind of email shows up in them at once."""

from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from accounts.emails import email_kinds
from billing.models import PAST_DUE_GRACE
from billing.retention_policy import PADDLE_EVENT_RETENTION_DAYS
from privacy.models import EXPORT_LIFETIME
from projects.limits import DEFAULT_PLAN_CODE
from projects.members import INVITATION_MAX_AGE
from projects.models import Plan
from projects.suspension import SUSPENSION_CANCEL_AFTER_DAYS
from requests_app.engine.accept import IDEMPOTENCY_WINDOW
from requests_app.engine.executor import RESPONSE_RETENTION

TERMS_CHANGE_NOTICE_DAYS = 14
PRICE_CHANGE_NOTICE_DAYS = 30
SUPPORT_EMAIL = "support@reqrun.com"
PRIVACY_EMAIL = "privacy@reqrun.com"
SECURITY_EMAIL = "security@reqrun.com"
# RFC 9116 asks for an Expires under a year away; the file is rebuilt from code on each
# request, so it moves forward with every deploy that still serves it.
SECURITY_TXT_LIFETIME = timedelta(days=180)
SECURITY_POLICY_ANCHOR = "security"


def _hours(duration: timedelta) -> int:
    return int(duration.total_seconds() // 3600)


def legal_facts() -> dict:
    """Every number and list the legal pages state, read from where the code keeps it."""
    plans = list(Plan.objects.order_by("sort_order", "pk"))
    return {
        "plans": plans,
        "free_plan": next((plan for plan in plans if plan.code == DEFAULT_PLAN_CODE), None),
        "email_kinds": email_kinds(),
        "terms_notice_days": TERMS_CHANGE_NOTICE_DAYS,
        "price_notice_days": PRICE_CHANGE_NOTICE_DAYS,
        "suspension_cancel_after_days": SUSPENSION_CANCEL_AFTER_DAYS,
        "paddle_event_retention_days": PADDLE_EVENT_RETENTION_DAYS,
        "past_due_grace_days": PAST_DUE_GRACE.days,
        "invitation_valid_days": INVITATION_MAX_AGE // 86400,
        "export_lifetime_days": EXPORT_LIFETIME.days,
        "session_days": settings.SESSION_COOKIE_AGE // 86400,
        "response_retention_hours": _hours(RESPONSE_RETENTION),
        "idempotency_window_hours": _hours(IDEMPOTENCY_WINDOW),
        "support_email": SUPPORT_EMAIL,
        "privacy_email": PRIVACY_EMAIL,
        "security_email": SECURITY_EMAIL,
    }


@require_GET
def terms(request: HttpRequest) -> HttpResponse:
    return render(request, "legal/terms.html", legal_facts())


@require_GET
def privacy_policy(request: HttpRequest) -> HttpResponse:
    return render(request, "legal/privacy.html", legal_facts())


@require_GET
def refunds(request: HttpRequest) -> HttpResponse:
    return render(request, "legal/refunds.html", legal_facts())


def security_txt_expires(now: datetime | None = None) -> datetime:
    """Midnight UTC, SECURITY_TXT_LIFETIME from today: the same all day, so caches agree."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return datetime.combine(today, time(), tzinfo=UTC) + SECURITY_TXT_LIFETIME


@require_GET
def security_txt(request: HttpRequest) -> HttpResponse:
    """RFC 9116: where to report a vulnerability, and the policy that applies to reports."""
    policy = request.build_absolute_uri(reverse("legal-terms")) + "#" + SECURITY_POLICY_ANCHOR
    lines = [
        f"Contact: mailto:{SECURITY_EMAIL}",
        f"Expires: {security_txt_expires():%Y-%m-%dT%H:%M:%SZ}",
        "Preferred-Languages: en",
        f"Canonical: {request.build_absolute_uri(reverse('security-txt'))}",
        f"Policy: {policy}",
    ]
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; charset=utf-8")
