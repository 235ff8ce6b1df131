"""The Paddle API through the official SDK: configuration, the HTTP session, and the few calls
ReqRun makes. Every failure comes out as `PaddleError` with a message fit for the customer."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from paddle_billing import Client, Environment, Options
from paddle_billing.Entities.Shared import CustomData
from paddle_billing.Entities.Subscription import Subscription as PaddleSubscription
from paddle_billing.Entities.Subscriptions import (
    SubscriptionEffectiveFrom,
    SubscriptionProrationBillingMode,
    SubscriptionResumeEffectiveFrom,
)
from paddle_billing.Exceptions.ApiError import ApiError
from paddle_billing.Resources.CustomerPortalSessions.Operations import (
    CreateCustomerPortalSession,
)
from paddle_billing.Resources.Customers.Operations import CreateCustomer, ListCustomers
from paddle_billing.Resources.Subscriptions.Operations import (
    CancelSubscription,
    ResumeSubscription,
    UpdateSubscription,
)
from paddle_billing.Resources.Subscriptions.Operations.Update import SubscriptionUpdateItem
from paddle_billing.Resources.Transactions.Operations import CreateTransaction
from paddle_billing.Resources.Transactions.Operations.Create import TransactionCreateItem

from core.untrusted import aware_time, in_utc

logger = logging.getLogger(__name__)

# The SDK logs each failed call with its URL and Paddle's detail; the customer search's URL
# holds the owner's email (`GET /customers?email=…`). Its logger stays outside the logging
# tree, so nothing reaches our handlers: `_call` logs the metadata (action, status, code).
sdk_logger = logging.Logger("paddle_billing.client")
sdk_logger.addHandler(logging.NullHandler())

# What our columns keep of Paddle's ids, and of a subscription's status and scheduled change
# (billing.models): an answer or event with longer ones cannot be recorded.
ID_MAX_LENGTH = 64
STATUS_MAX_LENGTH = 20
UNREACHABLE = "Paddle could not be reached, so nothing was changed. Please try again in a minute."
# Sent, and not answered in time: Paddle may have made the change all the same.
UNANSWERED = (
    "Paddle did not answer in time, so ReqRun cannot tell whether the change was made. "
    "Reload this page in a minute to see; try again only if it was not made."
)


class PaddleError(Exception):
    """A Paddle API call failed; the message can be shown to the customer as is."""

    def __init__(self, message: str, *, error_code: str = ""):
        super().__init__(message)
        self.error_code = error_code


def environment() -> str:
    return "production" if settings.PADDLE_ENVIRONMENT == "production" else "sandbox"


def is_configured() -> bool:
    """Checkout, API calls and webhook verification all need their credential."""
    return bool(
        settings.PADDLE_API_KEY and settings.PADDLE_CLIENT_TOKEN and settings.PADDLE_WEBHOOK_SECRET
    )


class PaddleSession(requests.Session):
    """The SDK's HTTP session: auth headers, and `PADDLE_API_BASE_URL` (a stand-in server for
    tests or staging) in place of the SDK's per-environment base URL when it is set."""

    def __init__(self, *, api_key: str, sdk_base_url: str, base_url: str = ""):
        super().__init__()
        self.sdk_base_url = sdk_base_url.rstrip("/")
        self.base_url = base_url.rstrip("/")
        self.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Paddle-Version": "1",
            }
        )

    def request(self, method, url, *args, **kwargs):
        if self.base_url and isinstance(url, str) and url.startswith(self.sdk_base_url):
            url = self.base_url + url[len(self.sdk_base_url) :]
        return super().request(method, url, *args, **kwargs)


def client() -> Client:
    sdk_environment = Environment(environment())
    session = PaddleSession(
        api_key=settings.PADDLE_API_KEY,
        sdk_base_url=sdk_environment.base_url,
        base_url=settings.PADDLE_API_BASE_URL,
    )
    return Client(
        settings.PADDLE_API_KEY,
        options=Options(sdk_environment),
        http_client=session,
        timeout=settings.PADDLE_API_TIMEOUT_SECONDS,
        logger=sdk_logger,
    )


@dataclass(frozen=True)
class SubscriptionState:
    """The fields ReqRun keeps from a Paddle subscription, from a webhook or an API answer."""

    subscription_id: str
    customer_id: str
    status: str
    price_id: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    scheduled_change_action: str
    scheduled_change_effective_at: datetime | None
    canceled_at: datetime | None
    # Paddle's time of this state (the entity's `updated_at`): a webhook event that occurred
    # before it describes an older state.
    updated_at: datetime | None

    def __post_init__(self):
        """ValueError when our copy could not keep it (an answer or event not understood)."""
        ids = (self.subscription_id, self.customer_id, self.price_id)
        statuses = (self.status, self.scheduled_change_action)
        if any(len(value) > ID_MAX_LENGTH for value in ids) or any(
            len(value) > STATUS_MAX_LENGTH for value in statuses
        ):
            raise ValueError("a subscription with ids or a status longer than ReqRun keeps")


def _kept_id(value: Any) -> str:
    """A Paddle id from an answer, as our columns keep it; ValueError when it cannot be."""
    if not (isinstance(value, str) and 0 < len(value) <= ID_MAX_LENGTH):
        raise ValueError("a Paddle id ReqRun cannot keep")
    return value


def _kept_time(moment: datetime | None) -> datetime | None:
    """A time from an answer, empty when the database could not give it back (`in_utc`)."""
    return in_utc(moment) if moment else None


def state_from_entity(entity: PaddleSubscription) -> SubscriptionState:
    period = entity.current_billing_period
    change = entity.scheduled_change
    return SubscriptionState(
        subscription_id=entity.id,
        customer_id=entity.customer_id,
        status=str(entity.status.value),
        price_id=entity.items[0].price.id if entity.items else "",
        current_period_start=_kept_time(period.starts_at) if period else None,
        current_period_end=_kept_time(period.ends_at) if period else None,
        scheduled_change_action=str(change.action.value) if change else "",
        scheduled_change_effective_at=_kept_time(change.effective_at) if change else None,
        canceled_at=_kept_time(entity.canceled_at),
        updated_at=_kept_time(entity.updated_at),
    )


def state_from_payload(data: dict[str, Any]) -> SubscriptionState:
    """From a webhook's `data` (a subscription entity as JSON); KeyError if it is not one."""
    period = data.get("current_billing_period") or {}
    change = data.get("scheduled_change") or {}
    items = data.get("items") or []
    return SubscriptionState(
        subscription_id=str(data["id"]),
        customer_id=str(data.get("customer_id") or ""),
        status=str(data["status"]),
        price_id=str(((items[0] or {}).get("price") or {}).get("id") or "") if items else "",
        current_period_start=aware_time(period.get("starts_at")),
        current_period_end=aware_time(period.get("ends_at")),
        scheduled_change_action=str(change.get("action") or ""),
        scheduled_change_effective_at=aware_time(change.get("effective_at")),
        canceled_at=aware_time(data.get("canceled_at")),
        updated_at=aware_time(data.get("updated_at")),
    )


def _call(action: str, operation, *args: Any, read: Callable[[Any], Any] = lambda answer: answer):
    """Run one SDK call and `read` its answer; turn every way either can fail into a
    `PaddleError` (logged without body)."""
    if not is_configured():
        raise PaddleError("Billing is not configured on this server.")
    try:
        return read(operation(*args))
    except ApiError as error:
        status = error.response.status_code if error.response is not None else None
        logger.warning(
            "paddle api error",
            extra={"action": action, "status_code": status, "error_code": error.error_code},
        )
        if status is not None and status >= 500:
            raise PaddleError(UNREACHABLE) from error
        raise PaddleError(
            f"Paddle refused to {action}: {error.detail}", error_code=error.error_code or ""
        ) from error
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else None
        logger.warning("paddle api error", extra={"action": action, "status_code": status})
        if status is not None and status < 500:
            raise PaddleError(f"Paddle refused to {action} (HTTP {status}).") from error
        raise PaddleError(UNREACHABLE) from error
    except requests.ReadTimeout as error:
        logger.warning("paddle api did not answer in time", extra={"action": action})
        raise PaddleError(UNANSWERED) from error
    except requests.RequestException as error:
        logger.warning(
            "paddle api unreachable", extra={"action": action, "error": type(error).__name__}
        )
        raise PaddleError(UNREACHABLE) from error
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # The SDK reads an answer, or an error body, of another shape than Paddle's (a list
        # for an object, a proxy's `{"error": "…"}`) with these.
        logger.warning(
            "paddle api answer not understood",
            extra={"action": action, "error": type(error).__name__},
        )
        raise PaddleError(
            f"Paddle's answer could not be read, so we could not {action}."
        ) from error


CUSTOMER_EXISTS = "customer_already_exists"


def create_customer(*, email: str, account_id: str) -> str:
    """A new Paddle customer for one account; `PaddleError` with `error_code` CUSTOMER_EXISTS
    when Paddle already has a customer with this email."""
    return _call(
        "set up billing",
        client().customers.create,
        CreateCustomer(email=email, custom_data=CustomData({"account_id": account_id})),
        read=lambda customer: _kept_id(customer.id),
    )


def customer_ids_with_email(*, email: str) -> list[str]:
    return _call(
        "set up billing",
        client().customers.list,
        ListCustomers(emails=[email]),
        read=lambda customers: [_kept_id(customer.id) for customer in customers.items],
    )


def create_checkout_transaction(*, customer_id: str, price_id: str, account_id: str) -> str:
    """A transaction for one price, billed to the account's customer, with the account in
    `custom_data`; Paddle.js opens it by id. Returns the transaction id."""
    return _call(
        "start the checkout",
        client().transactions.create,
        CreateTransaction(
            items=[TransactionCreateItem(price_id=price_id, quantity=1)],
            customer_id=customer_id,
            custom_data=CustomData({"account_id": account_id}),
        ),
        read=lambda created: _kept_id(created.id),
    )


def get_subscription(*, subscription_id: str) -> SubscriptionState:
    """The subscription as Paddle has it now."""
    return _call(
        "read the subscription",
        client().subscriptions.get,
        subscription_id,
        read=state_from_entity,
    )


def cancel(*, subscription_id: str, at_once: bool = False) -> SubscriptionState:
    """At the end of the billing period, or `at_once` (which also ends a paused one)."""
    return _call(
        "cancel the subscription",
        client().subscriptions.cancel,
        subscription_id,
        CancelSubscription(
            effective_from=SubscriptionEffectiveFrom.Immediately
            if at_once
            else SubscriptionEffectiveFrom.NextBillingPeriod
        ),
        read=state_from_entity,
    )


def remove_scheduled_change(*, subscription_id: str) -> SubscriptionState:
    """Withdraw a scheduled cancellation: Paddle's documented way is `scheduled_change: null`."""
    return _call(
        "keep the subscription",
        client().subscriptions.update,
        subscription_id,
        UpdateSubscription(scheduled_change=None),
        read=state_from_entity,
    )


def resume_paused(*, subscription_id: str) -> SubscriptionState:
    return _call(
        "resume the subscription",
        client().subscriptions.resume,
        subscription_id,
        ResumeSubscription(effective_from=SubscriptionResumeEffectiveFrom.Immediately),
        read=state_from_entity,
    )


def change_price(*, subscription_id: str, price_id: str, upgrade: bool) -> SubscriptionState:
    """Upgrades charge the prorated difference now; downgrades take effect at once with no
    credit or refund for the rest of the period (the Refund Policy: no prorated refunds)."""
    mode = (
        SubscriptionProrationBillingMode.ProratedImmediately
        if upgrade
        else SubscriptionProrationBillingMode.DoNotBill
    )
    return _call(
        "change the plan",
        client().subscriptions.update,
        subscription_id,
        UpdateSubscription(
            items=[SubscriptionUpdateItem(price_id=price_id, quantity=1)],
            proration_billing_mode=mode,
        ),
        read=state_from_entity,
    )


def customer_portal_url(*, customer_id: str, subscription_ids: list[str]) -> str:
    session = _call(
        "open the customer portal",
        client().customer_portal_sessions.create,
        customer_id,
        CreateCustomerPortalSession(subscription_ids=subscription_ids),
    )
    return _checked_url(session.urls.general.overview, "open the customer portal")


def invoice_pdf_url(*, transaction_id: str) -> str:
    document = _call("fetch the invoice", client().transactions.get_invoice_pdf, transaction_id)
    return _checked_url(document.url, "fetch the invoice")


def _checked_url(url: str, action: str) -> str:
    """We redirect the browser there, so only ever to an https URL."""
    if urlsplit(url or "").scheme != "https":
        logger.warning("paddle api answer not understood", extra={"action": action})
        raise PaddleError(f"Paddle's answer could not be read, so we could not {action}.")
    return url
