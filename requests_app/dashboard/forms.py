"""The requests list's filters: parsed from the query string, and never a reason for a 500."""

from urllib.parse import urlencode

from django import forms

from core.endpoints import PROXIED_ENDPOINTS
from core.ids import is_id_of
from requests_app.models import Status


class CursorField(forms.CharField):
    default_error_messages = {"invalid": "That page link is not valid."}

    def __init__(self, **kwargs):
        super().__init__(required=False, max_length=40, widget=forms.HiddenInput, **kwargs)

    def validate(self, value):
        super().validate(value)
        if value and not is_id_of("req", value):
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")


class RequestFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any status"), *Status.choices],
        error_messages={"invalid_choice": "“%(value)s” is not a request status."},
    )
    endpoint = forms.ChoiceField(
        required=False,
        choices=[("", "Any endpoint"), *[(e, e) for e in PROXIED_ENDPOINTS]],
        error_messages={"invalid_choice": "“%(value)s” is not an endpoint ReqRun proxies."},
    )
    q = forms.CharField(
        label="Request id or Idempotency-Key",
        required=False,
        max_length=255,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "req_… or your key"}),
    )
    after = CursorField()
    before = CursorField()

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("after") and cleaned.get("before"):
            self.add_error(None, "Choose either the newer or the older page, not both.")
        return cleaned

    def filters(self) -> dict:
        """The filters that parsed; a field that did not is dropped, not fatal."""
        data = getattr(self, "cleaned_data", {})
        return {
            "status": data.get("status", ""),
            "endpoint": data.get("endpoint", ""),
            "search": (data.get("q") or "").strip(),
        }

    def page_link(self, **cursor: str) -> str:
        """`?status=…&after=req_…`: another page with the same filters."""
        filters = self.filters()
        query = {
            "status": filters["status"],
            "endpoint": filters["endpoint"],
            "q": filters["search"],
            **cursor,
        }
        return "?" + urlencode({key: value for key, value in query.items() if value})

    def cursor(self) -> dict:
        if self.non_field_errors():
            return {}
        data = getattr(self, "cleaned_data", {})
        return {"after": data.get("after") or "", "before": data.get("before") or ""}

    def problems(self) -> list[str]:
        return [str(message) for errors in self.errors.values() for message in errors]
