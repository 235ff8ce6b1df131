"""The delete-account form: the owner's password, and which account they were looking at."""

from django import forms


class DeleteAccountForm(forms.Form):
    # The page's account, so a switch of account in another tab cannot redirect the deletion.
    account = forms.CharField(widget=forms.HiddenInput)
    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
        error_messages={"required": "Enter your password to confirm."},
    )
