"""The legal pages and the landing page state what the code and the plan table do: every
number they give is read from where the code keeps it, and every email the code can send
is named on the privacy page."""

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.template.loader import get_template, render_to_string
from django.test import override_settings
from django.utils import timezone

from accounts.emails import EMAIL_KINDS, ENUMERATION_SAFE_EMAIL_KINDS, email_kinds
from billing.retention_policy import PADDLE_EVENT_RETENTION_DAYS
from privacy import legal
from projects.members import INVITATION_MAX_AGE
from projects.models import Plan
from projects.suspension import SUSPENSION_CANCEL_AFTER_DAYS
from requests_app.engine.accept import IDEMPOTENCY_WINDOW
from requests_app.engine.retention import purge_expired_records
from requests_app.error_catalog import ERROR_CODES
from requests_app.models import Request
from tests.factories import AccountPlanFactory, ProjectFactory, RequestFactory, plan

ROOT = Path(__file__).resolve().parent.parent
APPS = ("accounts", "projects", "requests_app", "billing", "privacy", "core")

pytestmark = pytest.mark.django_db


def page(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, path
    return response.content.decode()


def text_of(html: str) -> str:
    """The page's words with tags dropped and whitespace folded, as a reader sees them."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


# ---------- emails ----------


def test_every_email_template_in_the_code_is_a_registered_kind():
    on_disk = {
        str(path.relative_to(ROOT / "templates")) for path in ROOT.glob("templates/*/email/*.txt")
    }
    registered = {
        template
        for kind in EMAIL_KINDS.values()
        for template in kind.templates
        if template.endswith(".txt")
    }
    assert on_disk, "no email templates found: has the templates folder moved?"
    assert registered == on_disk


def test_every_email_template_the_code_renders_is_registered():
    named = set()
    for app in APPS:
        for source in (ROOT / app).rglob("*.py"):
            named |= set(re.findall(r"[\"']([\w/]+/email/\w+(?:\.txt)?)[\"']", source.read_text()))
    registered = {t for kind in email_kinds().values() for t in kind.templates}
    assert named, "no email template names found in the code"
    assert named <= registered


def test_every_registered_email_template_exists():
    for kind in {**EMAIL_KINDS, **ENUMERATION_SAFE_EMAIL_KINDS}.values():
        for template in kind.templates:
            if template.endswith(".txt"):
                get_template(template)
            else:  # allauth's prefix: it renders a subject and a message from it
                get_template(f"{template}_subject.txt")
                get_template(f"{template}_message.txt")


def test_signing_up_sends_a_registered_verification_email(client, mailoutbox):
    response = client.post(
        "/accounts/signup/",
        {
            "email": "newcomer@example.com",
            "password1": "a-long-pass-99",
            "password2": "a-long-pass-99",
        },
    )
    assert response.status_code == 302, response.content.decode()[:500]
    [message] = mailoutbox
    assert message.to == ["newcomer@example.com"]
    [template] = [t for t in EMAIL_KINDS["verification"].templates if t.endswith("_signup")]
    assert message.subject.endswith(render_to_string(f"{template}_subject.txt").strip())


def test_the_privacy_page_names_every_email_kind_and_no_other(client):
    html = page(client, "/legal/privacy")
    assert set(re.findall(r'id="email-(\w+)"', html)) == set(email_kinds())
    for kind in email_kinds().values():
        assert f"{kind.name}:" in text_of(html)
    # the kinds the brief singles out
    for code in ("past_due", "payment_failed", "export_ready", "usage_notice", "invitation"):
        assert f'id="email-{code}"' in html


def test_enumeration_safe_emails_are_listed_only_when_allauth_sends_them(client):
    with override_settings(ACCOUNT_PREVENT_ENUMERATION=False):
        html = page(client, "/legal/privacy")
    assert 'id="email-unknown_account"' not in html
    with override_settings(ACCOUNT_PREVENT_ENUMERATION=True):
        html = page(client, "/legal/privacy")
    assert 'id="email-unknown_account"' in html
    assert 'id="email-account_already_exists"' in html


def test_the_privacy_page_says_what_is_kept_about_invitees(client):
    text = text_of(page(client, "/legal/privacy"))
    assert "may not belong to anyone who uses ReqRun yet" in text
    assert f"Its link works for {INVITATION_MAX_AGE // 86400} days" in text
    assert "the address, the role, who sent it and when it was sent, accepted or withdrawn" in text
    assert "until the account is deleted" in text


# ---------- retention ----------


def test_the_privacy_page_says_how_long_sessions_last(client, settings):
    settings.SESSION_COOKIE_AGE = 3 * 86400
    text = text_of(page(client, "/legal/privacy"))
    assert "Sign-in sessions last at most 3 days" in text
    assert "together with the IP address and browser recorded for it" in text


def test_the_privacy_page_says_how_long_the_security_log_and_a_deleted_logins_sessions_stay(
    client,
):
    """The security log keeps IP addresses; a deleted login's sessions go with it
    (tests/privacy/test_delete.py and test_admin_close.py hold the code to it)."""
    text = text_of(page(client, "/legal/privacy"))
    assert "The security log" in text
    assert "from which IP address, is kept while the account exists and deleted with it" in text
    assert "When your login is deleted, its sessions on every device are deleted with it" in text


def test_retention_windows_are_rendered_from_the_plan_table(client):
    text = text_of(page(client, "/legal/privacy"))
    for row in Plan.objects.all():
        assert f"{row.name}: {row.retention_days} days" in text

    Plan.objects.filter(code="pro").update(retention_days=21)
    text = text_of(page(client, "/legal/privacy"))
    assert "Pro: 21 days" in text
    assert "Pro: 14 days" not in text


def test_the_privacy_page_says_what_a_downgrade_does_to_older_history(client):
    free = plan("free")
    html = page(client, "/legal/privacy")
    assert 'id="downgrade"' in html
    text = text_of(html)
    assert f"the Free plan ({free.retention_days} days)" in text
    assert "the shorter window applies at the next purge, to all of your request history" in text

    Plan.objects.filter(pk=free.pk).update(retention_days=5)
    assert "the Free plan (5 days)" in text_of(page(client, "/legal/privacy"))


def test_after_a_downgrade_the_next_purge_applies_the_shorter_window():
    """What the page promises is what the purge does: the window is the plan's at purge time."""
    project = ProjectFactory()
    account_plan = AccountPlanFactory(account=project.account, plan=plan("pro"))
    request = RequestFactory(project=project, status="succeeded")
    ten_days_ago = timezone.now() - timedelta(days=10)
    Request.objects.filter(pk=request.pk).update(created_at=ten_days_ago)

    assert purge_expired_records(project.account) == 0  # Pro keeps 14 days

    account_plan.plan = plan("free")
    account_plan.save()
    assert purge_expired_records(project.account) == 1
    assert not Request.objects.filter(pk=request.pk).exists()


def test_the_privacy_page_states_how_long_paddle_events_are_kept(client):
    text = text_of(page(client, "/legal/privacy"))
    assert f"kept for {PADDLE_EVENT_RETENTION_DAYS} days after we receive them" in text
    assert "cut down as soon as we have processed them" in text
    assert "no names, email or postal addresses" in text


def test_what_the_privacy_page_says_of_paddle_events_is_what_is_kept():
    from billing.event_retention import accounting_record

    event = {
        "event_id": "evt_1",
        "event_type": "transaction.completed",
        "occurred_at": "2026-12-01T00:00:00Z",
        "data": {
            "id": "txn_1",
            "status": "completed",
            "customer": {"email": "someone@example.com", "name": "Some One"},
            "address": {"postal_code": "10115", "first_line": "Street 1"},
            "details": {"totals": {"total": "2900", "currency_code": "USD"}},
        },
    }
    kept = json.dumps(accounting_record(event))

    assert "txn_1" in kept and "2900" in kept
    for personal in ("someone@example.com", "Some One", "10115", "Street 1"):
        assert personal not in kept


# ---------- suspension, refunds, notice periods ----------


def test_the_terms_say_what_happens_to_queued_work_under_suspension(client):
    assert SUSPENSION_CANCEL_AFTER_DAYS == 14
    text = text_of(page(client, "/legal/terms"))
    assert "queued or waiting for a retry are held" in text
    assert "does not send them to the upstream provider" in text
    assert f"{SUSPENSION_CANCEL_AFTER_DAYS} days after it began, ReqRun cancels" in text
    named = set(re.findall(r"the same error code \((\w+) or (\w+)\)", text)[0])
    assert named == {"account_suspended", "project_suspended"}
    assert named <= {error.code for error in ERROR_CODES}


def test_the_refund_policy_says_an_operator_issues_refunds_in_paddle(client):
    text = text_of(page(client, "/legal/refunds"))
    assert "credit or a refund for the unused part of the billing period" in text
    assert "This does not happen automatically" in text
    assert "by hand in Paddle's dashboard" in text


def test_notice_periods_come_from_the_constants(client):
    assert (legal.TERMS_CHANGE_NOTICE_DAYS, legal.PRICE_CHANGE_NOTICE_DAYS) == (14, 30)
    terms = text_of(page(client, "/legal/terms"))
    assert f"at least {legal.TERMS_CHANGE_NOTICE_DAYS} days before it takes effect" in terms
    assert f"at least {legal.PRICE_CHANGE_NOTICE_DAYS} days before it takes effect" in terms
    privacy = text_of(page(client, "/legal/privacy"))
    assert f"at least {legal.TERMS_CHANGE_NOTICE_DAYS} days before it takes effect" in privacy
    refunds = text_of(page(client, "/legal/refunds"))
    assert f"at least {legal.PRICE_CHANGE_NOTICE_DAYS} days before they apply" in refunds


def test_the_terms_have_ip_licence_feature_change_and_survival_clauses(client):
    html = page(client, "/legal/terms")
    for anchor in ("our-ip", "feature-changes", "survival", "security"):
        assert f'id="{anchor}"' in html and f'href="#{anchor}"' in html
    text = text_of(html)
    assert "belong to ReqRun and its licensors" in text
    assert "non-exclusive, non-transferable licence to use the service" in text
    assert "we may add, change or remove features" in text
    assert "These parts keep applying afterwards" in text


# ---------- security.txt ----------


def security_fields(body: str) -> dict[str, str]:
    fields = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        assert name and value, f"not a field line: {line!r}"
        fields[name] = value
    return fields


def test_security_txt_follows_rfc_9116(client):
    response = client.get("/.well-known/security.txt")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    fields = security_fields(response.content.decode())
    assert fields["Contact"] == "mailto:security@reqrun.com"
    assert fields["Preferred-Languages"] == "en"
    assert fields["Canonical"] == "http://testserver/.well-known/security.txt"

    expires = datetime.strptime(fields["Expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    now = datetime.now(UTC)
    assert now < expires < now + timedelta(days=365)

    policy = urlsplit(fields["Policy"])
    assert policy.fragment == "security"
    html = page(client, policy.path)
    assert 'id="security"' in html
    assert "mailto:security@reqrun.com" in html


def test_security_txt_is_read_only(client):
    assert client.post("/.well-known/security.txt").status_code == 405


# ---------- the landing page's promises ----------


def test_the_landing_page_promises_what_idempotency_does(client):
    hours = int(IDEMPOTENCY_WINDOW.total_seconds() // 3600)
    text = text_of(page(client, "/"))
    for overclaim in ("never runs the same call twice", "It never runs twice", "completes once"):
        assert overclaim not in text
    assert f"for {hours} hours, a client retry with the same key and body attaches" in text
    assert "never starts a second run of it" in text
    assert "an attempt that timed out may still have reached your provider" in text

    terms = text_of(page(client, "/legal/terms"))
    assert f"for {hours} hours after a request with an Idempotency-Key is accepted" in terms
    assert "ReqRun never starts a second execution of it" in terms
    assert "may still have been received and processed by the provider" in terms


# ---------- PRODUCT section 10 stays true ----------

SECTION_10 = {
    "/legal/terms": [
        "reliability layer for requests made to OpenAI-compatible",
        "you accept these Terms of Service, the Privacy Policy and the Refund Policy",
        "must not use ReqRun",
        "OpenAI's usage policies",
        "misuse of the service",
        "You keep ownership of the prompts",
        "only as long as needed to run queued work, return results",
        "billed in advance",
        "renew automatically",
        "merchant of record",
        "accepted requests per month",
        "stays active until that date",
        "suspended for cause",
        '"as is" and "as available"',
        "cannot be waived by contract",
        "support@reqrun.com",
    ],
    "/legal/refunds": [
        "We do not give prorated refunds",
        "quota that you did not use",
        "for cause",
        "without cause",
    ],
    "/legal/privacy": [
        "Account data:",
        "Billing data:",
        "Project and API metadata:",
        "stored encrypted",
        "rate-limit windows, audit events",
        "signals derived from IP addresses",
        "Support messages:",
        "Legal bases",
        "Paddle",
        "Our email delivery provider",
        "The upstream provider you configure",
        "We do not sell personal data",
        "cross-context behavioural advertising",
        "Standard Contractual Clauses",
        "supervisory authority",
        "US state",
        "not discriminate",
        "stored only as hashes",
        "accepted only with a valid signature",
        "HTTP-only cookies",
        "privacy@reqrun.com",
    ],
}


@pytest.mark.parametrize("path", sorted(SECTION_10))
def test_the_facts_of_product_section_10_are_still_stated(client, path):
    text = text_of(page(client, path))
    for fact in SECTION_10[path]:
        assert fact in text, fact
