"""One answer to "what may this account do": plan limits with per-account overrides."""

from dataclasses import asdict, dataclass
from datetime import date

from django.db import IntegrityError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Account, User
from accounts.services import record_audit_event
from core import stripes
from projects.models import LIMIT_FIELDS, AccountPlan, MonthlyUsage, Plan, UsageStripe

DEFAULT_PLAN_CODE = "free"

# select_related() path from an Account to what limits_for() reads, to load both in one query.
PLAN_STATE_RELATED = "plan_state__plan"


class LimitReached(Exception):
    """Creating something would go over a plan limit; the message names the limit."""

    def __init__(self, limit: str, value: int, message: str):
        super().__init__(message)
        self.limit = limit
        self.value = value


@dataclass(frozen=True)
class Limits:
    plan_code: str
    plan_name: str
    projects: int
    api_keys_per_project: int
    monthly_requests: int
    retention_days: int
    pending_requests: int
    concurrency: int
    requests_per_minute: int
    max_attempts: int
    members: int
    upstreams_per_project: int

    def as_dict(self) -> dict[str, int]:
        values = asdict(self)
        return {field: values[field] for field in LIMIT_FIELDS}


def plan_state_of(account: Account) -> AccountPlan:
    try:
        return AccountPlan.objects.select_related("plan").get(account=account)
    except AccountPlan.DoesNotExist:
        plan = Plan.objects.get(code=DEFAULT_PLAN_CODE)
        try:
            with transaction.atomic():
                return AccountPlan.objects.create(account=account, plan=plan)
        except IntegrityError:  # created concurrently
            return AccountPlan.objects.select_related("plan").get(account=account)


def limits_for(account: Account, *, preloaded: bool = False) -> Limits:
    """The account's limits, read now.

    `preloaded=True` is for hot paths that have just read the account in the same query as
    its plan (`select_related(PLAN_STATE_RELATED)` from the account): no further query.
    """
    try:
        state = account.plan_state if preloaded else plan_state_of(account)
    except AccountPlan.DoesNotExist:
        state = plan_state_of(account)
    values = {
        field: getattr(state, field)
        if getattr(state, field) is not None
        else getattr(state.plan, field)
        for field in LIMIT_FIELDS
    }
    return Limits(plan_code=state.plan.code, plan_name=state.plan.name, **values)


def set_plan(
    *,
    account: Account,
    plan_code: str,
    actor: User | None = None,
    ip_address: str | None = None,
) -> AccountPlan:
    """Move the account to another plan; limits apply at once. Existing objects are kept."""
    return change_account_plan(
        account=account,
        changes={"plan": Plan.objects.get(code=plan_code)},
        actor=actor,
        ip_address=ip_address,
    )


def locked_plan_state(account: Account) -> AccountPlan:
    """The account's plan row (made, on Free, if it has none yet), locked until the caller's
    transaction ends. The account's row is locked first, in the order billing takes them
    (`sync_account_plan`), so two writers never each wait on the other."""
    Account.objects.select_for_update().filter(pk=account.pk).exists()
    plan_state_of(account)
    return AccountPlan.objects.select_for_update().select_related("plan").get(account=account)


@transaction.atomic
def change_account_plan(
    *,
    account: Account,
    changes: dict[str, Plan | int | None],
    actor: User | None = None,
    ip_address: str | None = None,
) -> AccountPlan:
    """Set the account's plan and the limit overrides named in `changes` (a limit None: the
    plan's own value) on its row as it is now, under the row's lock: a field not named keeps
    what its last writer (billing, another operator) set. Owners see each change in the
    security log: the plan's, and each limit's with its old and new value."""
    state = locked_plan_state(account)
    before = {field: getattr(state, field) for field in changes}
    previous = state.plan
    for field, value in changes.items():
        setattr(state, field, value)
    changed = [field for field in changes if getattr(state, field) != before[field]]
    if not changed:
        return state
    state.save(update_fields=[*changed, "changed_at"])
    record_plan_change(
        account=account, previous=previous, new=state.plan, actor=actor, ip_address=ip_address
    )
    for field in changed:
        if field in LIMIT_FIELDS:
            old = limit_shown(before[field], previous, field)
            new = limit_shown(getattr(state, field), state.plan, field)
            record_audit_event(
                account=account,
                actor=actor,
                action="limit_changed",
                target=f"{AccountPlan._meta.get_field(field).verbose_name}: {old} → {new}",
                ip_address=ip_address,
            )
    return state


def limit_shown(override: int | None, plan: Plan, field: str) -> str:
    """A limit as the security log names it: the override, or the plan's own value."""
    return str(override) if override is not None else f"{getattr(plan, field)} ({plan.name} plan)"


def record_plan_change(
    *,
    account: Account,
    previous: Plan,
    new: Plan,
    actor: User | None,
    ip_address: str | None = None,
) -> None:
    """Owners see every change of their plan in the security log, whoever made it (billing,
    an operator in admin or a set-up command)."""
    if previous.pk != new.pk:
        record_audit_event(
            account=account,
            actor=actor,
            action="plan_changed",
            target=f"{previous.name} → {new.name}",
            ip_address=ip_address,
        )


def current_period_start(today: date | None = None) -> date:
    today = today or timezone.now().date()
    return today.replace(day=1)


def next_period_start(start: date) -> date:
    return (start.replace(day=28) + timezone.timedelta(days=4)).replace(day=1)


def usage_row(account: Account, period_start: date | None = None) -> MonthlyUsage:
    """The account's row for the month, made if missing, with its `accepted_requests`."""
    period = period_start or current_period_start()
    MonthlyUsage.objects.get_or_create(account=account, period_start=period)
    return MonthlyUsage.objects.with_accepted().get(account=account, period_start=period)


def quota_percent(*, used: int, quota: int) -> int:
    """How much of a monthly quota is used, in whole percent rounded down and at most 100, as
    every page and usage email shows it: 100 only once requests are refused, 80 only once
    the 80 % notice is due. A quota of 0 is full."""
    return min(100, used * 100 // quota) if quota else 100


def take_quota_sql(*, start: str | None) -> str:
    """SQL that counts one accept on a stripe of the account's month below its share of the
    quota (`stripes.take_one`); its parameters are `quota_params`, then `start`'s."""
    return stripes.take_one(
        table=UsageStripe._meta.db_table,
        column="accepted",
        match="account_id = %s AND period_start = %s",
        limit="%s",
        start=start,
    )


def quota_params(account_id: int, limit: int) -> list:
    return [account_id, current_period_start(), limit]


COUNT_BELOW_LIMIT_SQL = take_quota_sql(start=None)
CREATE_USAGE_STRIPES = stripes.create_rows(
    table=UsageStripe._meta.db_table,
    key_columns="account_id, period_start",
    key_values="%s, %s",
    column="accepted",
)


def count_accepted_request(*, account: Account, limit: int) -> bool:
    """Add one accepted request to this month's count unless it is at `limit`.

    One conditional UPDATE of one of the month's stripes, so concurrent web processes can
    never overshoot the quota; it waits for a stripe another transaction holds. Call inside
    the accepting transaction: a refused or rolled-back request is not counted.
    """
    params = quota_params(account.pk, limit)
    if _count_below(params):
        return True
    # Nothing was counted: the account is at the limit, or this month's stripes do not
    # exist yet, or a concurrent first request is making them. Making them waits for that
    # insert, so the second UPDATE sees the committed rows and answers for certain.
    period = params[1]
    usage_row(account, period)  # the month's notices are kept on it
    with connection.cursor() as cursor:
        cursor.execute(CREATE_USAGE_STRIPES, [account.pk, period])
    return _count_below(params)


def _count_below(params: list) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(COUNT_BELOW_LIMIT_SQL, params)
        return cursor.rowcount == 1


def accepted_requests(account: Account, period_start: date | None = None) -> int:
    """The account's accepted requests in the month (this one by default)."""
    return (
        UsageStripe.objects.filter(
            account=account, period_start=period_start or current_period_start()
        ).aggregate(total=Sum("accepted"))["total"]
        or 0
    )


def ensure_below(limit_name: str, *, used: int, limit: int, noun: str, plan_name: str = "") -> None:
    if used >= limit:
        plan = f"The {plan_name} plan" if plan_name else "Your plan"
        raise LimitReached(
            limit_name,
            limit,
            f"{plan} allows {limit} {noun}. Upgrade on the pricing page to add more.",
        )
