"""Checkout bound to the account on the server: the account's own Paddle customer (created
once) and the transactions ReqRun creates for it. The browser only gets a transaction id."""

import logging

from django.db import IntegrityError, transaction

from accounts.models import Account, User
from billing import paddle
from billing.models import BillingCustomer, CheckoutTransaction, Subscription
from billing.paddle import PaddleError
from billing.selectors import current_subscription, purchasable_plan
from billing.services import BillingError
from projects.limits import plan_state_of

logger = logging.getLogger(__name__)

EMAIL_TAKEN = (
    "Paddle already bills this email address for another ReqRun account. Ask another owner "
    "to subscribe, or write to support@reqrun.com."
)


def customer_of(account: Account) -> BillingCustomer | None:
    return BillingCustomer.objects.filter(account=account).first()


def ensure_customer(*, account: Account, email: str) -> BillingCustomer:
    """The account's Paddle customer, created on first use. The account row is locked while
    Paddle is asked, so two checkouts at once still make one customer."""
    with transaction.atomic():
        Account.objects.select_for_update().filter(pk=account.pk).first()
        existing = customer_of(account)
        if existing is not None:
            return existing
        customer_id = _new_customer_id(account=account, email=email)
        try:
            with transaction.atomic():
                customer = BillingCustomer.objects.create(
                    account=account, paddle_customer_id=customer_id
                )
        except IntegrityError:
            raise BillingError(EMAIL_TAKEN) from None
    logger.info(
        "paddle customer stored",
        extra={"account_id": account.public_id, "customer_id": customer_id},
    )
    return customer


def _new_customer_id(*, account: Account, email: str) -> str:
    """Paddle keeps one customer per email. When the owner's (verified) email already has
    one that no other account holds — an earlier attempt whose answer we lost, or a deleted
    account — it is theirs to use; one held by another account is never shared."""
    try:
        return paddle.create_customer(email=email, account_id=account.public_id)
    except PaddleError as error:
        if error.error_code != paddle.CUSTOMER_EXISTS:
            raise
    held = set(BillingCustomer.objects.values_list("paddle_customer_id", flat=True))
    free = [
        customer_id
        for customer_id in paddle.customer_ids_with_email(email=email)
        if customer_id not in held
    ]
    if not free:
        raise BillingError(EMAIL_TAKEN)
    return free[0]


def start_checkout(*, account: Account, plan_code: str, actor: User) -> CheckoutTransaction:
    """Create (and record) the Paddle transaction an owner pays in Paddle.js for one plan."""
    offer = purchasable_plan(plan_code)
    if offer is None:
        raise BillingError("That plan cannot be bought here.")
    plan, price_id = offer
    if not plan_state_of(account).plan.self_serve:
        raise BillingError("Your plan is arranged with ReqRun; write to support@reqrun.com.")
    subscription = current_subscription(account)
    if subscription is not None and subscription.paused_or_pausing:
        state = "paused" if subscription.status == Subscription.Status.PAUSED else "set to pause"
        raise BillingError(
            f"Your subscription is {state}: resume it on the billing page instead of buying "
            "another."
        )
    if subscription is not None and subscription.status == Subscription.Status.PAST_DUE:
        raise BillingError(
            "Your payment is past due: update your payment method on the billing page instead "
            "of buying another subscription."
        )
    if subscription is not None and subscription.is_live:
        raise BillingError("You already subscribe: switch plans on the billing page.")
    if not paddle.is_configured():
        raise BillingError("Billing is not configured on this server.")
    customer = ensure_customer(account=account, email=actor.email)
    transaction_id = paddle.create_checkout_transaction(
        customer_id=customer.paddle_customer_id, price_id=price_id, account_id=account.public_id
    )
    checkout = CheckoutTransaction.objects.create(
        account=account,
        paddle_transaction_id=transaction_id,
        paddle_customer_id=customer.paddle_customer_id,
        price_id=price_id,
    )
    logger.info(
        "checkout transaction created",
        extra={"account_id": account.public_id, "transaction_id": transaction_id},
    )
    return checkout
