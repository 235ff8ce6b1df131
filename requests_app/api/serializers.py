"""The request object of the API, exactly as PRODUCT §3 shapes it, in one serializer.

The views render it and the OpenAPI schema documents it from the same fields, so the two
cannot drift apart.
"""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.endpoints import PROXIED_ENDPOINTS
from core.untrusted import parse_json_to_keep
from requests_app.engine import retention
from requests_app.models import Attempt, Request, Status

NULLABLE_INT = {"type": "integer", "nullable": True}
NULLABLE_STRING = {"type": "string", "nullable": True}


@extend_schema_field({"type": "integer", "description": "Unix seconds."})
class UnixTimestampField(serializers.Field):
    """A datetime as whole Unix seconds (DRF itself renders `None` as null)."""

    def to_representation(self, value) -> int:
        return int(value.timestamp())


class BlankAsNullChoiceField(serializers.ChoiceField):
    """A choice stored as '' until it is known, answered as null."""

    def to_representation(self, value):
        return super().to_representation(value) or None


class BlankAsNullCharField(serializers.CharField):
    """A name stored as '' when there is none (attempts recorded before failover), as null."""

    def to_representation(self, value):
        return super().to_representation(value) or None


class ConstantField(serializers.Field):
    """The `object` discriminator OpenAI objects carry: always the same string."""

    def __init__(self, value: str, **kwargs):
        self.value = value
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, instance) -> str:
        return self.value


@extend_schema_field(
    {
        "type": "object",
        "nullable": True,
        "description": "Token counts the upstream reported: null when it reported none, "
        "or counts that are not whole numbers.",
        "properties": {
            "prompt_tokens": NULLABLE_INT,
            "completion_tokens": NULLABLE_INT,
            "total_tokens": NULLABLE_INT,
        },
    }
)
class UsageField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "nullable": True,
        "description": "Set when no upstream answer could be had (see /docs/errors).",
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": NULLABLE_STRING,
            "code": NULLABLE_STRING,
        },
    }
)
class RequestErrorField(serializers.JSONField):
    pass


RESPONSE_SCHEMA = {
    "type": "object",
    "nullable": True,
    "description": "The upstream's final answer, kept 24 hours after the end.",
    "required": ["status_code", "body"],
    "properties": {
        "status_code": {"type": "integer"},
        "body": {"description": "The upstream's JSON body (or text)."},
    },
}


class AttemptListSerializer(serializers.ListSerializer):
    def get_attribute(self, instance: Request):
        # Attempts are opened by the claim that counts them: a request with none counted
        # (every new or queued one) has no rows to read.
        return [] if instance.attempt_count == 0 else instance.attempts_as_read()


class AttemptSerializer(serializers.Serializer):
    class Meta:
        list_serializer_class = AttemptListSerializer

    number = serializers.IntegerField(min_value=1)
    upstream = BlankAsNullCharField(
        allow_null=True,
        help_text="The name of the project's upstream this attempt was sent to.",
    )
    started_at = UnixTimestampField()
    finished_at = UnixTimestampField(allow_null=True)
    outcome = BlankAsNullChoiceField(choices=Attempt.Outcome.choices, allow_null=True)
    status_code = serializers.IntegerField(allow_null=True)
    error_code = serializers.CharField(allow_null=True)
    latency_ms = serializers.IntegerField(allow_null=True)
    retry_after_ms = serializers.IntegerField(
        allow_null=True,
        help_text="The wait the upstream asked for (Retry-After, retry-after-ms).",
    )


class RequestObjectSerializer(serializers.Serializer):
    """A recorded request: its status, attempts and, while kept, its result."""

    id = serializers.CharField(source="public_id")
    object = ConstantField("request")
    status = serializers.ChoiceField(choices=Status.choices)
    project = serializers.CharField(source="project.public_id")
    endpoint = serializers.ChoiceField(choices=[(path, path) for path in PROXIED_ENDPOINTS])
    model = serializers.CharField()
    stream = serializers.BooleanField()
    idempotency_key = serializers.CharField(allow_null=True)
    created_at = UnixTimestampField()
    started_at = UnixTimestampField(allow_null=True)
    finished_at = UnixTimestampField(allow_null=True)
    partial = serializers.BooleanField(
        help_text="A stream broke after it started: the answer is incomplete."
    )
    attempts = AttemptSerializer(many=True)
    usage = UsageField(allow_null=True)
    response = serializers.SerializerMethodField()
    error = RequestErrorField(allow_null=True)

    @extend_schema_field(RESPONSE_SCHEMA)
    def get_response(self, request: Request) -> dict | None:
        if not retention.response_is_retained(request) or request.response_status_code is None:
            return None
        raw = retention.stored_response_body(request)
        if raw is None:  # the encryption keys no longer open it: left out, as if expired
            return None
        try:
            body = parse_json_to_keep(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return {"status_code": request.response_status_code, "body": body}


class RequestListSerializer(serializers.Serializer):
    """`GET /v1/requests`: OpenAI's list shape (documented here, built by the view)."""

    object = ConstantField("list")
    data = RequestObjectSerializer(many=True)
    first_id = serializers.CharField(allow_null=True)
    last_id = serializers.CharField(allow_null=True)
    has_more = serializers.BooleanField()


# One instance for every call: a serializer deep-copies its declared fields when it is
# built, which cost more than rendering them. Rendering changes nothing on it.
REQUEST_OBJECT = RequestObjectSerializer()


def request_object(request: Request) -> dict:
    """Serialise a request; expects `project` selected and `attempts` prefetched."""
    return REQUEST_OBJECT.to_representation(request)
