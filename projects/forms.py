"""Dashboard forms. Fields parse the input; the services decide what is allowed, and
`submit` turns their refusal into an error on the form so the page can say why."""

from collections.abc import Callable
from typing import Any

from django import forms
from django.core.validators import MaxValueValidator

from accounts.adapter import validate_mailable_email
from accounts.models import Membership
from projects.errors import (
    InvalidFailoverPolicy,
    InvalidModelMap,
    InvalidProviderKey,
    NameNotAvailable,
    UpstreamRefused,
)
from projects.limits import LimitReached
from projects.members import MembershipError
from projects.models import (
    ATTEMPT_TIMEOUT_MAX_SECONDS,
    DEADLINE_MAX_SECONDS,
    FAILOVER_TRIES_MAX,
    FailoverOn,
    Invitation,
    Project,
    Upstream,
)
from projects.upstream_guard import UpstreamNotAllowed
from projects.upstreams import check_model_map, check_provider_key

REFUSALS = (
    NameNotAvailable,
    UpstreamNotAllowed,
    InvalidProviderKey,
    InvalidModelMap,
    InvalidFailoverPolicy,
    UpstreamRefused,
    MembershipError,
)


class ServiceForm(forms.Form):
    limit_reached: LimitReached | None = None

    def submit(self, service: Callable[..., Any], *, field: str | None = None, **kwargs) -> Any:
        """Call `service`; if it refuses, record why on `field` and return None."""
        try:
            return service(**kwargs)
        except REFUSALS as error:
            self.add_error(field, str(error))
        except LimitReached as error:
            self.limit_reached = error  # shown with a link to pricing
        return None


class NameForm(ServiceForm):
    noun: str  # what is being named, for the "required" message
    name = forms.CharField(max_length=80)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["name"].error_messages["required"] = f"Give the {self.noun} a name."


class ProjectForm(NameForm):
    noun = "project"


class ProjectRenameForm(ProjectForm):
    prefix = "rename"  # the settings page's add-upstream form has a "name" field too


class ApiKeyForm(NameForm):
    noun = "API key"
    name = forms.CharField(max_length=80, help_text="Where the key is used, e.g. “production”.")


def check_deadline_covers_an_attempt(form: forms.BaseForm) -> None:
    """A retry policy's deadline is at least one attempt's timeout: said on the deadline
    field of `form` (the dashboard's retry policy, the project's admin form), once both
    fields are valid."""
    timeout = form.cleaned_data.get("attempt_timeout_seconds")
    deadline = form.cleaned_data.get("deadline_seconds")
    if timeout and deadline and deadline < timeout:
        form.add_error("deadline_seconds", "The deadline must be at least one attempt's timeout.")


class RetryPolicyForm(ServiceForm):
    max_attempts = forms.IntegerField(
        required=False, min_value=1, help_text="Empty: your plan's maximum."
    )
    attempt_timeout_seconds = forms.IntegerField(
        label="Timeout per attempt (seconds)", min_value=1, max_value=ATTEMPT_TIMEOUT_MAX_SECONDS
    )
    deadline_seconds = forms.IntegerField(
        label="Deadline (seconds)",
        min_value=1,
        max_value=DEADLINE_MAX_SECONDS,
        help_text="No new attempt starts this long after the request was accepted.",
    )
    zero_retention = forms.BooleanField(
        required=False,
        help_text="Do not keep response bodies after delivery in wait mode. Requests already "
        "running when you turn it on keep theirs for up to 24 hours.",
    )

    def __init__(self, *args, project: Project, max_attempts_cap: int, **kwargs):
        kwargs.setdefault(
            "initial",
            {
                "max_attempts": project.max_attempts,
                "attempt_timeout_seconds": project.attempt_timeout_seconds,
                "deadline_seconds": project.deadline_seconds,
                "zero_retention": project.zero_retention,
            },
        )
        super().__init__(*args, **kwargs)
        field = self.fields["max_attempts"]
        field.widget.attrs["max"] = max_attempts_cap
        field.validators.append(
            MaxValueValidator(
                max_attempts_cap,
                message=f"Your plan allows at most {max_attempts_cap} attempts.",
            )
        )
        field.help_text = f"Empty: your plan's maximum ({max_attempts_cap})."

    def clean(self):
        cleaned = super().clean()
        check_deadline_covers_an_attempt(self)
        return cleaned


class FailoverPolicyForm(ServiceForm):
    failover_on = forms.MultipleChoiceField(
        label="Move to the next upstream on",
        choices=FailoverOn.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="A caller's own 4xx (400, 401, 404, 422, …) never moves a request: another "
        "upstream would refuse it too. Answers no client can read (a redirect, an HTML page "
        "instead of JSON) mean an upstream's base URL is wrong or behind a login proxy: never "
        "retried on that upstream, they end the request unless ticked (off by default). With "
        "none ticked, a request stays on the upstream it started on.",
    )
    tries_per_upstream = forms.IntegerField(
        label="Tries per upstream",
        min_value=1,
        max_value=FAILOVER_TRIES_MAX,
        help_text="Attempts on one upstream before moving on (one for an answer that is "
        "never retried, such as insufficient_quota). Moving on is immediate; the "
        "retry backoff applies between tries on the same upstream and after every upstream "
        "failed in a round. Max attempts and the deadline under Retries bound the whole chain.",
    )
    return_to_primary = forms.BooleanField(
        label="Return to the primary on the next request",
        required=False,
        help_text="Off: each request starts on the upstream the last one succeeded on, so "
        "traffic stays on a fallback until it fails in turn.",
    )

    def __init__(self, *args, project: Project, **kwargs):
        kwargs.setdefault(
            "initial",
            {
                "failover_on": project.failover_on,
                "tries_per_upstream": project.failover_tries_per_upstream,
                "return_to_primary": project.failover_return_to_primary,
            },
        )
        super().__init__(*args, **kwargs)


def model_map_lines(model_map: dict[str, str]) -> str:
    return "\n".join(f"{source}={destination}" for source, destination in model_map.items())


class ModelMapField(forms.CharField):
    """`src=dst` per line, parsed into a dict; blank lines are ignored."""

    widget = forms.Textarea(attrs={"rows": 3, "placeholder": "gpt-4o-mini=their-model-name"})

    def to_python(self, value) -> dict[str, str]:
        text = super().to_python(value)
        model_map: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            source, equals, destination = line.partition("=")
            if not equals or not source.strip() or not destination.strip():
                raise forms.ValidationError(
                    f"Line {number}: write each pair as source=destination, "
                    "e.g. gpt-4o-mini=their-model-name."
                )
            if source.strip() in model_map:
                raise forms.ValidationError(f"Line {number}: “{source.strip()}” is mapped twice.")
            model_map[source.strip()] = destination.strip()
        try:
            return check_model_map(model_map)
        except InvalidModelMap as error:
            raise forms.ValidationError(str(error)) from error


def provider_key_field(label: str, help_text: str = "") -> forms.CharField:
    return forms.CharField(
        label=label,
        required=False,
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "placeholder": "sk-…"}),
        help_text=help_text,
    )


class UpstreamForm(ServiceForm):
    """An upstream's base URL, model map and, optionally, a provider key to store."""

    base_url = forms.CharField(
        label="Base URL",
        max_length=500,
        help_text="As the OpenAI SDK takes it; ReqRun appends the endpoint path.",
        widget=forms.URLInput(attrs={"placeholder": "https://api.openai.com/v1"}),
    )
    provider_key = provider_key_field(
        "Provider API key",
        "Empty keeps the stored key. Changing the host (scheme, name or port) removes the "
        "stored provider key, so it is never sent somewhere new unasked, and the account's "
        "owners are emailed: enter the key for the new host with the change.",
    )
    model_map = ModelMapField(
        label="Model map",
        required=False,
        help_text="One source=destination pair per line: the request's model is renamed for "
        "this upstream. Unmapped models pass unchanged.",
    )

    def clean_provider_key(self) -> str:
        provider_key = self.cleaned_data["provider_key"]
        if not provider_key:
            return ""
        try:
            return check_provider_key(provider_key)
        except InvalidProviderKey as error:
            raise forms.ValidationError(str(error)) from error


class UpstreamAddForm(UpstreamForm):
    name = forms.CharField(
        label="Name",
        max_length=40,
        required=False,
        help_text="Lowercase letters, digits and dashes. Empty: fallback-1, fallback-2, …",
    )
    field_order = ["name", "base_url", "provider_key", "model_map"]


class UpstreamEditForm(UpstreamForm):
    def __init__(self, *args, upstream: Upstream, **kwargs):
        kwargs.setdefault(
            "initial",
            {"base_url": upstream.base_url, "model_map": model_map_lines(upstream.model_map)},
        )
        super().__init__(*args, **kwargs)
        if upstream.has_provider_key:
            self.fields["provider_key"].label = "Replace provider API key"


class ProviderKeyForm(ServiceForm):
    provider_key = forms.CharField(
        label="Provider API key",
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "placeholder": "sk-…"}),
        error_messages={"required": "Paste the provider's API key."},
    )


class InviteForm(ServiceForm):
    email = forms.EmailField(
        max_length=Invitation._meta.get_field("email").max_length,
        validators=[validate_mailable_email],
        error_messages={
            "required": "Enter the address to invite.",
            "max_length": "Enter an address of at most %(limit_value)d characters.",
        },
    )
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class MemberForm(ServiceForm):
    """Names a member of the current account by their email (memberships have no public id)."""

    email = forms.EmailField(widget=forms.HiddenInput)


class RoleForm(MemberForm):
    role = forms.ChoiceField(choices=Membership.Role.choices)
