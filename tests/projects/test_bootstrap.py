"""`manage.py bootstrap_project`: one JSON line on stdout, reuse on a second run, clear
errors on bad input (and then nothing is created)."""

import json
from io import StringIO

import pytest
from allauth.account.models import EmailAddress
from django.core.management import CommandError, call_command

from accounts.models import Account, Membership, User
from projects.limits import limits_for
from projects.models import ApiKey, Project
from projects.services import authenticate_api_key
from projects.upstreams import provider_key_of

pytestmark = pytest.mark.django_db

ARGS = [
    "--email",
    "Eve@Example.com",
    "--upstream-url",
    "http://127.0.0.1:9999/v1",
    "--upstream-key",
    "sk-upstream-secret-1",
]


def bootstrap(*extra):
    out, err = StringIO(), StringIO()
    call_command("bootstrap_project", *ARGS, *extra, stdout=out, stderr=err)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, out.getvalue()
    return json.loads(lines[0])


def test_prints_one_json_line_with_working_ids():
    result = bootstrap("--plan", "pro", "--password", "eve-pass-4471-x")
    assert set(result) == {"account", "project", "api_key"}
    account = Account.objects.get(public_id=result["account"])
    project = Project.objects.get(public_id=result["project"], account=account)
    assert project.name == "Default"
    (primary,) = project.upstreams.all()
    assert (primary.name, primary.base_url) == ("primary", "http://127.0.0.1:9999/v1")
    assert provider_key_of(primary) == "sk-upstream-secret-1"
    assert authenticate_api_key(result["api_key"]).project == project
    assert limits_for(account).plan_code == "pro"

    user = User.objects.get(email="eve@example.com")
    assert user.check_password("eve-pass-4471-x")
    assert Membership.objects.get(user=user, account=account).role == "owner"
    address = EmailAddress.objects.get(user=user)
    assert address.verified and address.primary


def test_second_run_reuses_user_account_and_project_with_a_new_key():
    first = bootstrap()
    second = bootstrap("--plan", "team")
    assert (second["account"], second["project"]) == (first["account"], first["project"])
    assert second["api_key"] != first["api_key"]
    assert User.objects.count() == 1 and Project.objects.count() == 1
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 2
    assert limits_for(Account.objects.get()).plan_code == "team"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"--email": "not-an-email"}, "is not a valid email address"),
        ({"--upstream-url": "nonsense"}, "Enter a full base URL"),
        ({"--upstream-key": "short"}, "does not look like a provider API key"),
    ],
)
def test_bad_input_is_a_clear_error_and_creates_nothing(changes, error):
    args = list(ARGS)
    for flag, value in changes.items():
        args[args.index(flag) + 1] = value
    with pytest.raises(CommandError, match=error):
        call_command("bootstrap_project", *args, stdout=StringIO())
    assert not User.objects.exists() and not Project.objects.exists()


def test_private_upstream_refused_unless_allowed(settings):
    settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS = False
    with pytest.raises(CommandError, match="must use https"):
        call_command("bootstrap_project", *ARGS, stdout=StringIO())
    args = [*ARGS[:3], "https://127.0.0.1/v1", *ARGS[4:]]
    with pytest.raises(CommandError, match="private, loopback or link-local"):
        call_command("bootstrap_project", *args, stdout=StringIO())
    assert not Project.objects.exists()


def test_key_limit_is_named():
    bootstrap()
    bootstrap()
    with pytest.raises(CommandError, match="2 active API keys per project.*--plan"):
        bootstrap()


def test_a_failed_run_leaves_nothing_behind_and_a_corrected_one_makes_one_account(
    transactional_db, caplog
):  # real commits: the command's transaction is not nested in the test's
    args = list(ARGS)
    args[args.index("--upstream-key") + 1] = "short"  # refused after the account would exist
    with pytest.raises(CommandError, match="does not look like a provider API key"):
        call_command("bootstrap_project", *args, stdout=StringIO())

    assert not Account.objects.exists() and not User.objects.exists()
    assert not Membership.objects.exists() and not Project.objects.exists()
    assert "account created" not in caplog.messages  # no log line for what was undone

    bootstrap()
    assert Account.objects.count() == 1 and User.objects.count() == 1
    assert caplog.messages.count("account created") == 1


def test_stdout_holds_the_json_line_alone_when_a_run_emails_the_owners(
    transactional_db, settings, capsys
):  # real commits: the owners' email goes out when the command's transaction commits
    """The README runs it twice with one email, the second time pointing the project at the
    offline fake upstream: that changes the upstream's host, which emails the owners, and in
    development the email is printed to the console. A script reading stdout needs the JSON."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    first = bootstrap()
    capsys.readouterr()

    args = list(ARGS)
    args[args.index("--upstream-url") + 1] = "http://localhost:9999/v1"
    call_command("bootstrap_project", *args)

    captured = capsys.readouterr()
    assert "Upstream host changed" in captured.err  # still shown, on stderr
    (line,) = captured.out.splitlines()
    assert json.loads(line)["project"] == first["project"]
