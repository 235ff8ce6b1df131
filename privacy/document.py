"""What an account export contains, written as one JSON document.

Metadata only: no provider key (its last four characters at most), no API key digest, no
request or response body. Requests are those still inside the plan's retention window, in
the API's request-object shape without `response`; they are written in batches, so a big
account never sits in memory whole.
"""

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, TextIO

from django.core.serializers.json import DjangoJSONEncoder

from accounts.models import Account
from billing.models import Invoice, Subscription
from projects.limits import limits_for
from projects.models import ApiKey, Project, Upstream
from requests_app.api.serializers import request_object
from requests_app.models import DailyUsage, Request

FORMAT = "reqrun.account_export"
FORMAT_VERSION = 1
REQUEST_BATCH_SIZE = 500
# Progress: the small sections are the first few percent, the requests the rest.
SECTIONS_DONE_PERCENT = 5
REQUESTS_DONE_PERCENT = 99


def _dumps(value: Any) -> str:
    return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False)


def account_section(account: Account) -> dict:
    return {
        "id": account.public_id,
        "name": account.name,
        "created_at": account.created_at,
        "suspended_at": account.suspended_at,
        "suspension_reason": account.suspension_reason or None,
    }


def plan_section(account: Account) -> dict:
    limits = limits_for(account)
    return {"code": limits.plan_code, "name": limits.plan_name, "limits": limits.as_dict()}


def members_section(account: Account) -> list[dict]:
    return [
        {
            "email": membership.user.email,
            "role": membership.role,
            "joined_at": membership.created_at,
        }
        for membership in account.memberships.select_related("user").order_by("created_at")
    ]


def invitations_section(account: Account) -> list[dict]:
    return [
        {
            "id": invitation.public_id,
            "email": invitation.email,
            "role": invitation.role,
            "invited_by": invitation.invited_by.email if invitation.invited_by else None,
            "created_at": invitation.created_at,
            "accepted_at": invitation.accepted_at,
            "revoked_at": invitation.revoked_at,
        }
        for invitation in account.invitations.select_related("invited_by").order_by("created_at")
    ]


def api_key_entry(api_key: ApiKey) -> dict:
    return {
        "id": api_key.public_id,
        "name": api_key.name,
        "display": f"rr_{api_key.prefix}_…",
        "created_by": api_key.created_by.email if api_key.created_by else None,
        "created_at": api_key.created_at,
        "last_used_at": api_key.last_used_at,
        "revoked_at": api_key.revoked_at,
    }


def upstream_entry(upstream: Upstream) -> dict:
    return {
        "name": upstream.name,
        "position": upstream.position,
        "base_url": upstream.base_url,
        "provider_key_last4": upstream.provider_key_last4 or None,
        "model_map": upstream.model_map,
        "enabled": upstream.enabled,
        # What the owners were emailed when it was pointed at another host.
        "host_changes": [
            {
                "changed_at": move.audit_event.created_at,
                "changed_by": move.audit_event.actor.email if move.audit_event.actor else None,
                "ip_address": move.audit_event.ip_address,
                "old_origin": move.old_origin,
                "new_origin": move.new_origin,
                "provider_key_cleared": move.provider_key_cleared,
            }
            for move in upstream.moves.select_related("audit_event__actor").order_by("pk")
        ],
    }


def project_entry(project: Project) -> dict:
    return {
        "id": project.public_id,
        "name": project.name,
        "created_at": project.created_at,
        "upstreams": [
            upstream_entry(upstream)
            # `defer`: the encrypted provider key is never even read.
            for upstream in project.upstreams.defer("provider_key_encrypted").order_by(
                "position", "pk"
            )
        ],
        "max_attempts": project.max_attempts,
        "attempt_timeout_seconds": project.attempt_timeout_seconds,
        "deadline_seconds": project.deadline_seconds,
        "zero_retention": project.zero_retention,
        "failover": {
            "on": list(project.failover_on),
            "tries_per_upstream": project.failover_tries_per_upstream,
            "return_to_primary": project.failover_return_to_primary,
        },
        "suspended_at": project.suspended_at,
        "suspension_reason": project.suspension_reason or None,
        "api_keys": [
            api_key_entry(api_key)
            for api_key in project.api_keys.select_related("created_by").order_by("created_at")
        ],
    }


def projects_section(account: Account) -> list[dict]:
    projects = account.projects.not_deleted().order_by("created_at")
    return [project_entry(project) for project in projects]


def usage_section(account: Account) -> list[dict]:
    return [
        {"month": row.period_start.strftime("%Y-%m"), "accepted_requests": row.accepted_requests}
        for row in account.monthly_usage.with_accepted().order_by("period_start")
    ]


def subscription_entry(subscription: Subscription) -> dict:
    return {
        "paddle_subscription_id": subscription.paddle_subscription_id,
        "status": subscription.status,
        "plan": subscription.plan.code if subscription.plan else None,
        "current_period_start": subscription.current_period_start,
        "current_period_end": subscription.current_period_end,
        "scheduled_change": subscription.scheduled_change_action or None,
        "scheduled_change_effective_at": subscription.scheduled_change_effective_at,
        "canceled_at": subscription.canceled_at,
        "created_at": subscription.created_at,
    }


def invoice_entry(invoice: Invoice) -> dict:
    return {
        "paddle_transaction_id": invoice.paddle_transaction_id,
        "invoice_number": invoice.invoice_number or None,
        "amount": invoice.amount,
        "amount_minor": invoice.amount_minor,
        "currency_code": invoice.currency_code,
        "billed_at": invoice.billed_at,
    }


def audit_events_section(account: Account) -> list[dict]:
    return [
        {
            "created_at": event.created_at,
            "action": event.action,
            "target": event.target,
            "actor": event.actor.email if event.actor else None,
            "ip_address": event.ip_address,
        }
        for event in account.audit_events.select_related("actor").order_by("created_at", "pk")
    ]


def daily_usage_section(account: Account) -> list[dict]:
    """Per-day totals kept for request records already past the retention window."""
    rows = DailyUsage.objects.filter(
        account=account, project__deleted_at__isnull=True
    ).select_related("project")
    return [
        {
            "day": row.day.isoformat(),
            "project": row.project.public_id,
            "requests": row.requests,
            "tokens": row.tokens,
            "succeeded": row.succeeded,
            "failed": row.failed,
        }
        for row in rows.order_by("day", "project__public_id")
    ]


def sections(account: Account, *, generated_at: datetime) -> dict[str, Any]:
    """Everything but the requests, in the order it is written."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "generated_at": generated_at,
        "account": account_section(account),
        "plan": plan_section(account),
        "members": members_section(account),
        "invitations": invitations_section(account),
        "projects": projects_section(account),
        "monthly_usage": usage_section(account),
        "daily_usage_of_purged_requests": daily_usage_section(account),
        "subscriptions": [
            subscription_entry(subscription)
            for subscription in account.subscriptions.select_related("plan")
        ],
        "invoices": [invoice_entry(invoice) for invoice in account.invoices.all()],
        "audit_events": audit_events_section(account),
    }


def exported_requests(account: Account, *, now: datetime):
    """The account's requests still inside its retention window, bodies never loaded; a
    deleted project's are not, though a worker has yet to delete them."""
    cutoff = now - timedelta(days=limits_for(account).retention_days)
    return (
        Request.objects.filter(
            account=account, created_at__gte=cutoff, project__deleted_at__isnull=True
        )
        .defer("request_body", "response_body", "response_headers")
        .select_related("project")
        .prefetch_related("attempts")
        .order_by("pk")
    )


def request_entry(request: Request) -> dict:
    # The body column was deferred: setting it to None here (not loading it) makes
    # `request_object` leave the response out instead of decrypting it.
    request.response_body = None
    entry = request_object(request)
    del entry["response"]
    entry["response_status_code"] = request.response_status_code
    return entry


def _batches(requests) -> Iterator[list[Request]]:
    last_pk = 0
    while batch := list(requests.filter(pk__gt=last_pk)[:REQUEST_BATCH_SIZE]):
        yield batch
        last_pk = batch[-1].pk


def write_export(
    *, account: Account, out: TextIO, now: datetime, on_progress: Callable[[int], None]
) -> None:
    """Write the export of `account` to `out`, calling `on_progress(percent)` along the way."""
    out.write("{")
    for key, value in sections(account, generated_at=now).items():
        out.write(f"{_dumps(key)}: {_dumps(value)}, ")
    on_progress(SECTIONS_DONE_PERCENT)
    requests = exported_requests(account, now=now)
    total, written = requests.count(), 0
    out.write('"requests": [')
    for batch in _batches(requests):
        for request in batch:
            out.write(("," if written else "") + _dumps(request_entry(request)))
            written += 1
        span = REQUESTS_DONE_PERCENT - SECTIONS_DONE_PERCENT
        on_progress(SECTIONS_DONE_PERCENT + span * min(written, total) // max(total, 1))
    out.write("]}")
