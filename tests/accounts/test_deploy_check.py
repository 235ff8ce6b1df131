"""Production-like settings pass Django's deployment checklist without a single warning."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.fernet import Fernet

from devstack.__main__ import production_like_env, read_procfile

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
    assert refused.stderr.startswith("ReqRun not started: EMAIL_URL is not set")

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


# Each case is run through reqrun/settings.py as every process loads it (web, worker, beat and
# manage.py alike), all in one interpreter so the suite pays for its imports once.
SETTINGS_PROBE = """
import contextlib, io, json, os, runpy, sys
base = dict(os.environ)
verdicts = []
for case, wanted in json.loads(sys.stdin.read()):
    os.environ.clear()
    os.environ.update(base)
    for name, value in case.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            loaded = runpy.run_path("reqrun/settings.py")
    except SystemExit as stopped:
        verdicts.append({"code": stopped.code, "said": said.getvalue()})
    else:
        verdicts.append({"code": 0, "said": said.getvalue(),
                         "values": {name: loaded[name] for name in wanted}})
print(json.dumps(verdicts, default=repr))
"""


def load_settings(*cases: tuple[dict[str, str | None], list[str]]) -> list[dict]:
    """For each (environment changes, setting names): the exit code and standard error of
    loading the settings, and the named settings' values when it loaded."""
    result = subprocess.run(
        [sys.executable, "-c", SETTINGS_PROBE],
        cwd=ROOT,
        env={**os.environ, **production_like_env(), "PROMETHEUS_MULTIPROC_DIR": ""},
        input=json.dumps(cases),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


FERNET_KEY = Fernet.generate_key().decode()

UNUSABLE = [
    ("SECRET_KEY", None),
    ("SECRET_KEY", "   "),
    ("REQRUN_ENCRYPTION_KEYS", f"{FERNET_KEY},not-a-fernet-key-zzz"),
    ("REQRUN_ENCRYPTION_KEYS", " , "),
    ("DATABASE_URL", "mysql://reqrun:db-password-zzz@db.example.com/reqrun"),
    ("DATABASE_URL", "garbage"),
    ("REDIS_URL", "http://redis.example.com:6379/0"),
    ("REDIS_URL", "redis://redis.example.com:port/0"),
    ("EMAIL_URL", "garbage"),
    ("EMAIL_URL", "smtp://mailer:mail-password-zzz@smtp.example.com:abc"),
    ("DEBUG", "ture"),
    ("SECURE_SSL_REDIRECT", "maybe"),
    ("DB_POOL_MAX_SIZE", "abc"),
    ("DB_POOL_MAX_SIZE", "0"),
    ("DB_POOL_MIN_SIZE", "-1"),
    ("DB_POOL_MIN_SIZE", "41"),  # more than DB_POOL_MAX_SIZE's 40
    ("DB_POOL_TIMEOUT", "-5"),
    ("DB_POOL_TIMEOUT", "nan"),
    ("EMAIL_TIMEOUT", "x"),
    ("SECURE_HSTS_SECONDS", "-1"),
    ("REQRUN_SWEEP_INTERVAL_SECONDS", "0"),
    ("REQRUN_BEAT_LEASE_SECONDS", "-1"),
    ("REQRUN_WATCHDOG_TIMEOUT_SECONDS", "1e999"),
    ("REQRUN_MAX_BODY_BYTES", "-1"),
    ("PORT", "70000"),
    ("PORT", "-1"),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_FORMAT", "xml"),
    ("PADDLE_ENVIRONMENT", "prod"),
    ("REQRUN_TRUSTED_PROXIES", "127.0.0.1,10.0.0.0/33"),
    ("REQRUN_METRICS_ALLOWED_IPS", "prometheus.internal"),
    ("CSRF_TRUSTED_ORIGINS", "reqrun.example.com"),
    ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/metrics"),
]


def test_a_variable_no_process_can_use_stops_it_with_one_line_naming_it():
    verdicts = load_settings(*(({name: value}, []) for name, value in UNUSABLE))

    for (name, value), verdict in zip(UNUSABLE, verdicts, strict=True):
        case = f"{name}={value!r}: {verdict}"
        assert verdict["code"] == 78, case  # EX_CONFIG: a supervisor can tell it from a crash
        lines = verdict["said"].splitlines()
        assert len(lines) == 1, case
        assert lines[0].startswith(f"ReqRun not started: {name}"), case
        for secret in ("zzz", FERNET_KEY):  # neither a key nor a password is repeated
            assert secret not in lines[0], case


def test_values_are_read_as_written_less_stray_spaces():
    dollar_key = "$" + "k" * 60  # Django's own get_random_secret_key() may start with "$"
    other_key = Fernet.generate_key().decode()
    verdicts = load_settings(
        (
            {
                "SECRET_KEY": dollar_key,
                "REQRUN_ENCRYPTION_KEYS": f" {FERNET_KEY} , {other_key},{FERNET_KEY}",
                "ALLOWED_HOSTS": "reqrun.example.com, api.example.com ",
                "REQRUN_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
                "DEBUG": " True ",
                "PORT": " 8001 ",
                "LOG_LEVEL": "debug",
                "DB_POOL_MAX_SIZE": "",  # blank is the default, as compose passes an unset one
            },
            [
                "SECRET_KEY",
                "REQRUN_ENCRYPTION_KEYS",
                "ALLOWED_HOSTS",
                "REQRUN_TRUSTED_PROXIES",
                "DEBUG",
                "DATABASES",
            ],
        ),
        ({"ALLOWED_HOSTS": "", "DEBUG": "0"}, ["ALLOWED_HOSTS", "DEBUG"]),
    )

    loaded, blank_hosts = verdicts
    assert loaded["code"] == 0, loaded["said"]
    values = loaded["values"]
    assert values["SECRET_KEY"] == dollar_key
    assert values["REQRUN_ENCRYPTION_KEYS"] == [FERNET_KEY, other_key, FERNET_KEY]
    assert values["ALLOWED_HOSTS"] == ["reqrun.example.com", "api.example.com"]
    assert values["REQRUN_TRUSTED_PROXIES"] == ["127.0.0.1", "10.0.0.0/8"]
    assert values["DEBUG"] is True
    assert values["DATABASES"]["default"]["OPTIONS"]["pool"]["max_size"] == 40
    assert blank_hosts["code"] == 0, blank_hosts["said"]
    assert blank_hosts["values"] == {"ALLOWED_HOSTS": ["localhost", "127.0.0.1"], "DEBUG": False}


def test_every_process_stops_at_once_on_an_unusable_variable():
    procfile = read_procfile()
    commands = {name: procfile[name] for name in ("web", "worker")}  # manage.py: above
    env = {
        **os.environ,
        **production_like_env(),
        "DB_POOL_MAX_SIZE": "forty",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }

    def run(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        ran = dict(zip(commands, pool.map(run, commands.values()), strict=True))

    for name, result in ran.items():
        output = (result.stdout + result.stderr).splitlines()
        assert result.returncode == 78, (name, output)
        assert output == [
            "ReqRun not started: DB_POOL_MAX_SIZE must be a whole number of at least 1 "
            "(default 40), not 'forty'."
        ], name
