"""Production-like settings pass Django's deployment checklist without a single warning."""

import os
import subprocess
import sys
from pathlib import Path

from devstack.__main__ import production_like_env

ROOT = Path(__file__).resolve().parent.parent.parent


def test_check_deploy_is_clean_with_production_settings():
    env = {**os.environ, **production_like_env()}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_debug_is_off_unless_asked_for():
    env = {key: value for key, value in os.environ.items() if key != "DEBUG"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ.setdefault("
            "'DJANGO_SETTINGS_MODULE', 'reqrun.settings'); django.setup(); "
            "from django.conf import settings; "
            "print(settings.DEBUG, settings.SESSION_COOKIE_SECURE)",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.stdout.split() == ["False", "True"], result.stderr


def start_django(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "reqrun.settings"},
        capture_output=True,
        text=True,
    )


def test_without_email_settings_production_refuses_to_start():
    env = {key: value for key, value in os.environ.items() if key != "EMAIL_URL"}

    refused = start_django({**env, "DEBUG": "false"})
    assert refused.returncode != 0
    assert "ImproperlyConfigured: EMAIL_URL is not set" in refused.stderr

    assert start_django({**env, "DEBUG": "true"}).returncode == 0  # development: the console
    with_email = start_django({**os.environ, **production_like_env()})
    assert with_email.returncode == 0, with_email.stderr


def test_a_mistyped_trusted_proxy_list_refuses_to_start():
    result = start_django({**os.environ, "REQRUN_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/33"})
    assert result.returncode != 0
    assert "REQRUN_TRUSTED_PROXIES: '10.0.0.0/33'" in result.stderr


def test_paddle_prices_may_be_written_with_spaces():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print(sorted(settings.PADDLE_PRICES.items()))",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "reqrun.settings",
            "PADDLE_PRICES": "pro: pri_a, team = pri_b",
        },
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "[('pro', 'pri_a'), ('team', 'pri_b')]", result.stderr
