"""Token usage as reported by the upstream, in one shape whatever the endpoint, and the
totals the usage page and the retention rollup count over request rows."""

from django.db.models import BigIntegerField, Count, Q, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce

from requests_app.engine import sse
from requests_app.models import Status

# Token counts come from the upstream's answer: only whole numbers of at most this many
# digits are kept and summed (a sum of them stays far inside a bigint).
TOKEN_DIGITS = 15
TOKENS_REPORTED = Q(usage__total_tokens__regex=rf"^[0-9]{{1,{TOKEN_DIGITS}}}$")
TOKENS = Coalesce(
    Sum(Cast(KT("usage__total_tokens"), BigIntegerField()), filter=TOKENS_REPORTED), 0
)
SUCCEEDED = Q(status=Status.SUCCEEDED)

REQUEST_TOTALS = {
    "requests": Count("pk"),
    "tokens": TOKENS,
    "succeeded": Count("pk", filter=SUCCEEDED),
    "failed": Count("pk", filter=Q(status__in=[Status.FAILED, Status.EXPIRED])),
    # Succeeded without a usage the totals could count (a stream without
    # `stream_options.include_usage`, an upstream that sends none): tokens unknown, not 0.
    "unreported": Count("pk", filter=SUCCEEDED) - Count("pk", filter=SUCCEEDED & TOKENS_REPORTED),
}


def normalise_usage(usage) -> dict | None:
    """Chat/completions report prompt/completion tokens; the Responses API input/output.

    Only whole numbers are kept (`_count`): a broken upstream's string (which may hold a NUL
    or a lone surrogate, neither storable in PostgreSQL) or NaN must not fail the request's
    record.
    """
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    total = _count(usage.get("total_tokens"))
    if prompt is None and total is None:
        return None
    if total is None:
        total = (prompt or 0) + (completion or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _count(value) -> int | None:
    """A whole number the usage page can sum: not a bool, a negative or a count past
    TOKEN_DIGITS digits, which a broken upstream may send and no total could count."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**TOKEN_DIGITS:
        return value
    return None


def usage_from_event_stream(body: bytes) -> dict | None:
    """The usage in a relayed SSE stream: chat's usage chunk or the Responses API's last
    event (`response.completed`, or `.incomplete` / `.failed`)."""
    usage = None
    for event in sse.event_objects(body):
        if event.get("usage"):
            usage = event["usage"]
        elif event.get("type") in sse.RESPONSE_ENDS and isinstance(event.get("response"), dict):
            usage = event["response"].get("usage") or usage
    return normalise_usage(usage)
