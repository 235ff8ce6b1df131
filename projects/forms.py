"""Dashboard forms. Fields parse the input; the services decide what is allowed, and
`submit` turns their refusal into an error on the form so the page can say why."""

from collections.abc import Callable
from typing import Any

from django import forms
from django.core.validators import MaxValueValidator

from accounts.models import Membership
from projects.limits import LimitReached
from projects.members import MembershipError
from projects.models import Project
from projects.services import InvalidProviderKey, NameNotAvailable, check_provider_key
from projects.upstream_guard import UpstreamNotAllowed

REFUSALS = (NameNotAvailable, UpstreamNotAllowed, InvalidProviderKey, MembershipError)


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


class ApiKeyForm(NameForm):
    noun = "API key"
    name = forms.CharField(max_length=80, help_text="Where the key is used, e.g. “production”.")


class UpstreamForm(ServiceForm):
    upstream_base_url = forms.CharField(
        label="Upstream base URL",
        max_length=500,
        help_text="As the OpenAI SDK takes it; ReqRun appends the endpoint path.",
        widget=forms.URLInput(attrs={"placeholder": "https://api.openai.com/v1"}),
    )
    max_attempts = forms.IntegerField(
        required=False, min_value=1, help_text="Empty: your plan's maximum."
    )
    attempt_timeout_seconds = forms.IntegerField(
        label="Timeout per attempt (seconds)", min_value=1, max_value=600
    )
    deadline_seconds = forms.IntegerField(
        label="Deadline (seconds)",
        min_value=1,
        max_value=86_400,
        help_text="No new attempt starts this long after the request was accepted.",
    )
    zero_retention = forms.BooleanField(
        required=False, help_text="Do not keep response bodies after delivery in wait mode."
    )
    provider_key = forms.CharField(
        label="Provider API key for a new host",
        required=False,
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "placeholder": "sk-…"}),
        help_text="Changing the host (scheme, name or port) removes the stored provider key, "
        "so it is never sent somewhere new unasked, and the account's owners are emailed. "
        "Enter the key for the new host here to keep requests working; a change of path "
        "keeps the stored key.",
    )

    def __init__(self, *args, project: Project, max_attempts_cap: int, **kwargs):
        kwargs.setdefault(
            "initial",
            {
                "upstream_base_url": project.upstream_base_url,
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

    def clean_provider_key(self) -> str:
        provider_key = self.cleaned_data["provider_key"]
        if not provider_key:
            return ""
        try:
            return check_provider_key(provider_key)
        except InvalidProviderKey as error:
            raise forms.ValidationError(str(error)) from error

    def clean(self):
        cleaned = super().clean()
        timeout, deadline = cleaned.get("attempt_timeout_seconds"), cleaned.get("deadline_seconds")
        if timeout and deadline and deadline < timeout:
            self.add_error(
                "deadline_seconds", "The deadline must be at least one attempt's timeout."
            )
        return cleaned


class ProviderKeyForm(ServiceForm):
    provider_key = forms.CharField(
        label="Provider API key",
        strip=True,
        widget=forms.PasswordInput(attrs={"autocomplete": "off", "placeholder": "sk-…"}),
        error_messages={"required": "Paste the provider's API key."},
    )


class InviteForm(ServiceForm):
    email = forms.EmailField(error_messages={"required": "Enter the address to invite."})
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class MemberForm(ServiceForm):
    """Names a member of the current account by their email (memberships have no public id)."""

    email = forms.EmailField(widget=forms.HiddenInput)


class RoleForm(MemberForm):
    role = forms.ChoiceField(choices=Membership.Role.choices)
