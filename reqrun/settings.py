"""Django settings. Every value that differs between environments comes from the environment.

A value no process can run with stops whichever process loads these settings (web, worker,
beat, manage.py) before it does anything: one line on standard error naming the variable and
what to put there, exit status 78 (EX_CONFIG), never a traceback and never a process that
starts and fails each request later.
"""

import math
import os
import ssl
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import environ
import redis
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from core.client_address import parse_networks
from core.postgresql.pool import connection_given_up

BASE_DIR = Path(__file__).resolve().parent.parent

# sysexits.h EX_CONFIG: a process manager can tell "fix the configuration" from a crash.
EXIT_MISCONFIGURED = 78
DAY = 24 * 3600


def refuse(message: str) -> NoReturn:
    """Stop this process on a setting it cannot run with, in one line naming the variable."""
    # Logging is configured by these very settings, so this one line goes to stderr itself.
    sys.stderr.write(f"ReqRun not started: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_MISCONFIGURED)


def text(name: str, default: str = "") -> str:
    """The variable as written, less stray spaces; `default` when it is unset or blank (as
    compose passes one it was given no value for). Not django-environ's reading, which takes a
    value starting with `$` for the name of another variable to read instead: a secret may
    start with `$` (Django's own get_random_secret_key() makes such keys)."""
    return os.environ.get(name, "").strip() or default


def names(name: str, default: list[str]) -> list[str]:
    """A comma-separated list, each entry without stray spaces, empty entries dropped."""
    entries = [entry.strip() for entry in text(name).split(",")]
    return [entry for entry in entries if entry] or default


def choice(name: str, default: str, options: tuple[str, ...]) -> str:
    value = text(name, default)
    if value.lower() not in options:
        refuse(f"{name} must be one of {', '.join(options)}, not {value!r}.")
    return value.lower()


def flag(name: str, *, default: bool) -> bool:
    value = text(name).lower()
    if not value:
        return default
    if value in ("true", "yes", "y", "on", "ok", "1"):
        return True
    if value in ("false", "no", "n", "off", "0"):
        return False
    refuse(f"{name} must be true or false, not {value!r}.")


def count(name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    """A whole number from `minimum` to `maximum` (a size, a port, whole seconds)."""
    value = text(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        upto = f" and at most {maximum}" if maximum is not None else ""
        refuse(
            f"{name} must be a whole number of at least {minimum}{upto} "
            f"(default {default}), not {value!r}."
        )
    return number


def seconds(name: str, default: float, *, zero: bool = False) -> float:
    """A duration in seconds, above 0 (or 0 too, with `zero`), at most a day."""
    value = text(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (0 <= number <= DAY) or (number == 0 and not zero):
        least = "0" if zero else "above 0"
        refuse(
            f"{name} must be a number of seconds, {least} and at most {DAY} "
            f"(default {default:g}), not {value!r}."
        )
    return number


def networks(name: str, default: list[str], *, anyone: bool = False) -> list[str]:
    """Addresses or networks (`10.0.0.0/8`), and with `anyone`, `*` for every address: read
    as core.client_address reads them at each request."""
    entries = names(name, default)
    try:
        parse_networks(name, entries, anyone=anyone)
    except ValueError as error:
        refuse(str(error))
    return entries


DEBUG = flag("DEBUG", default=False)

SECRET_KEY = text("SECRET_KEY")
if not SECRET_KEY:
    refuse(
        "SECRET_KEY is not set. `make run` and `make test` set development values; "
        "in production set SECRET_KEY to a long random string."
    )

ALLOWED_HOSTS = names("ALLOWED_HOSTS", ["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = names("CSRF_TRUSTED_ORIGINS", [])
for origin in CSRF_TRUSTED_ORIGINS:
    if "://" not in origin:
        refuse(
            f"CSRF_TRUSTED_ORIGINS: {origin!r} has no scheme; write the origin as the browser "
            "sends it, e.g. https://reqrun.example.com."
        )
CSRF_FAILURE_VIEW = "core.csrf.csrf_failure"
# Addresses or networks of the proxies in front (comma-separated; `*` trusts every peer, only
# for platforms where nothing but their router can reach the app, whose hop alone is then
# believed). Only these may tell us the client's address in X-Forwarded-For; the Procfile
# passes the same list to uvicorn.
REQRUN_TRUSTED_PROXIES = networks("REQRUN_TRUSTED_PROXIES", ["127.0.0.1"], anyone=True)
# allauth's own X-Forwarded-For parsing counts hops without looking at the peer, so it stays
# off: accounts.adapter hands allauth the address from accounts.access.client_ip instead.
ALLAUTH_TRUSTED_PROXY_COUNT = 0
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = None

for required in ("DATABASE_URL", "REDIS_URL"):
    if not text(required):
        refuse(
            f"{required} is not set. `make run` and `make test` start embedded servers and set "
            f"it for you; to run a process by hand, see `python -m devstack env`."
        )
# Checked before django-environ parses them: it warns with the whole parsed URL, password
# included, about a scheme it does not know. Neither is ever repeated: both hold a password.
if urlsplit(text("DATABASE_URL")).scheme not in ("postgres", "postgresql", "pgsql"):
    refuse("DATABASE_URL must be a PostgreSQL URL: postgres://user:password@host:5432/reqrun.")
try:
    redis.connection.parse_url(text("REDIS_URL"))
except ValueError:
    refuse(
        "REDIS_URL must be a Redis URL: redis://[:password@]host:6379/0 "
        "(rediss:// for TLS, unix:///path/to/redis.sock)."
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_celery_beat",
    "rest_framework",
    "adrf",
    "drf_spectacular",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.usersessions",
    "core",
    "accounts",
    "projects",
    "requests_app",
    "billing",
    "privacy",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "reqrun.middleware.ContentSecurityPolicyMiddleware",
    "reqrun.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "reqrun.middleware.NoStoreWhenSignedInMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "allauth.usersessions.middleware.UserSessionsMiddleware",
    "accounts.middleware.TwoFactorSecretUnreadableMiddleware",
]

# /v1 is served by its own handler (reqrun/asgi.py) with only these: an API call needs no
# session, CSRF, messages or allauth state.
API_MIDDLEWARE = [
    "reqrun.middleware.SecurityMiddleware",
    "reqrun.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "reqrun.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.current_account",
            ],
        },
    },
]

WSGI_APPLICATION = "reqrun.wsgi.application"
ASGI_APPLICATION = "reqrun.asgi.application"

try:
    DATABASES = {"default": environ.Env.db_url_config(text("DATABASE_URL"))}
except ValueError:  # a port that is not a number
    refuse("DATABASE_URL must be a PostgreSQL URL: postgres://user:password@host:5432/reqrun.")
# Django's PostgreSQL backend, whose pool hands out no connection the server has closed.
DATABASES["default"]["ENGINE"] = "core.postgresql"
# A psycopg connection pool per process. Under ASGI, Django binds connections to the async
# context, so without a pool every request would open (and leak) a new connection; with it,
# closing a connection hands it back. The pool replaces persistent connections.
DATABASES["default"]["CONN_MAX_AGE"] = 0
# Server-side binding lets psycopg prepare each statement on a connection's first use of
# it (prepare_threshold=1); the hot path runs the same dozen statements on every request,
# and planning them afresh each time was over a third of PostgreSQL's CPU per request.
# Behind PgBouncer in transaction mode, prepared statements do not survive between
# transactions: set DB_SERVER_SIDE_BINDING=false there (psycopg then binds on the client
# and prepares nothing).
if flag("DB_SERVER_SIDE_BINDING", default=True):
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 1
else:
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None
DB_POOL_MAX_SIZE = count("DB_POOL_MAX_SIZE", 40, minimum=1)
DB_POOL_MIN_SIZE = count("DB_POOL_MIN_SIZE", min(2, DB_POOL_MAX_SIZE), minimum=0)
if DB_POOL_MIN_SIZE > DB_POOL_MAX_SIZE:
    refuse(f"DB_POOL_MIN_SIZE must be at most DB_POOL_MAX_SIZE ({DB_POOL_MAX_SIZE}).")
DATABASES["default"]["OPTIONS"]["pool"] = {
    "min_size": DB_POOL_MIN_SIZE,
    "max_size": DB_POOL_MAX_SIZE,
    "timeout": seconds("DB_POOL_TIMEOUT", 30.0),
    # A connection the pool could not open (the server down, or out of connection slots)
    # is tried again with a doubling pause, for 5 minutes by psycopg_pool's default: after
    # an outage of N seconds a process would wait up to N more before its next try, still
    # answering 503 with the database back. Given up after 2 s, it is tried afresh at the
    # next demand for a connection, so a process is back within a second of the database.
    "reconnect_timeout": 2.0,
    # Given up (and refused once more), it says so to every caller waiting for a connection
    # (a 503 within about 2 s, not at the end of DB_POOL_TIMEOUT); a worker's callers wait
    # on while it tries again. A pool merely busy keeps its callers waiting.
    "reconnect_failed": connection_given_up,
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = text("REDIS_URL")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "reqrun",
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

# allauth: email is the identity, verified before first sign-in.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_UNIQUE_EMAIL = True
# Sign-up with a taken email and password reset for an unknown one answer like any other;
# the mailbox's owner learns the truth by email (allauth's "account already exists" and
# "unknown account" messages).
ACCOUNT_PREVENT_ENUMERATION = True
ACCOUNT_EMAIL_UNKNOWN_ACCOUNTS = True
# Rate limits, sessions and audit events read the client's address through
# accounts.access.client_ip, which believes X-Forwarded-For only from REQRUN_TRUSTED_PROXIES.
ACCOUNT_ADAPTER = "accounts.adapter.AccountAdapter"
# A new user gets their own account in the same transaction as the user row.
ACCOUNT_FORMS = {"signup": "accounts.forms.SignupForm"}
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
# Adding, removing or making primary an email asks for the password again (allauth keeps it
# for 5 minutes): a stolen session alone cannot move the account to an address whose
# password-reset link its holder would read.
ACCOUNT_REAUTHENTICATION_REQUIRED = True
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[ReqRun] "
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "http" if DEBUG else "https"
ACCOUNT_RATE_LIMITS = {
    "login": "30/m/ip",
    "login_failed": "10/m/ip,5/5m/key",
    "signup": "20/m/ip",
    "confirm_email": "1/3m/key",
    "reset_password": "20/m/ip,5/m/key",
    "reset_password_from_key": "20/m/ip",
    "change_password": "5/m/user",
    "manage_email": "10/m/user",
}
LOGIN_REDIRECT_URL = "/app/"
LOGIN_URL = "/accounts/login/"
# Two-factor sign-in: offered to everyone, required of staff before the admin opens
# (accounts/admin.py). Failed codes count against ACCOUNT_RATE_LIMITS["login_failed"].
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "ReqRun"
# TOTP secrets and recovery-code seeds are stored encrypted with REQRUN_ENCRYPTION_KEYS; one
# no key opens is a form error at the code step (these forms), a message on the 2FA pages.
MFA_ADAPTER = "accounts.mfa.EncryptedMFAAdapter"
MFA_FORMS = {
    "authenticate": "accounts.forms.AuthenticateForm",
    "reauthenticate": "accounts.forms.ReauthenticateForm",
}

if not DEBUG and not text("EMAIL_URL"):
    refuse(
        "EMAIL_URL is not set: with DEBUG off, verification and password-reset emails must be "
        "delivered, not written to the log. Set EMAIL_URL, e.g. "
        "smtp+tls://user:password@smtp.example.com:587 (DEBUG=true uses the console)."
    )
try:
    EMAIL_CONFIG = environ.Env.email_url_config(text("EMAIL_URL", "consolemail://"))
except (ImproperlyConfigured, ValueError):  # an unknown scheme, a port that is not a number
    refuse(
        "EMAIL_URL must be a mail server URL, e.g. smtp+tls://user:password@smtp.example.com:587 "
        "(smtp://, smtp+tls:// or smtp+ssl://; consolemail:// prints the emails)."
    )
vars().update(EMAIL_CONFIG)
# Django waits on the mail server forever by default: one that accepts and never answers would
# hold the web or Celery worker sending the mail. A failed send is handled (docs/operations.md).
EMAIL_TIMEOUT = count("EMAIL_TIMEOUT", 10, minimum=1, maximum=DAY)
DEFAULT_FROM_EMAIL = text("DEFAULT_FROM_EMAIL", "ReqRun <no-reply@reqrun.com>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(text("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# Security. Production sits behind a TLS-terminating proxy that sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = flag("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = count("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "strict-origin-when-cross-origin"
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Our own origin, plus Paddle.js and its checkout frames on the pages that sell; inline style
# attributes only (progress bars), never inline scripts. Forms post only to us, but the billing
# page's portal button is answered with a redirect to Paddle's customer portal, and browsers
# hold every redirect of a form's submission to form-action.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' https://cdn.paddle.com",
        "style-src 'self' https://cdn.paddle.com",
        "style-src-attr 'unsafe-inline'",
        "img-src 'self' data: https://*.paddle.com",
        "connect-src 'self' https://*.paddle.com",
        "frame-src https://*.paddle.com",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self' https://*.paddle.com",
        "object-src 'none'",
    ]
)

# Upstreams and secrets at rest.
MAKE_A_FERNET_KEY = (
    "Make one with: python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)
REQRUN_ENCRYPTION_KEYS = names("REQRUN_ENCRYPTION_KEYS", [])
if not REQRUN_ENCRYPTION_KEYS:
    refuse(
        "REQRUN_ENCRYPTION_KEYS is not set: give one or more Fernet keys, primary first. "
        + MAKE_A_FERNET_KEY
    )
for position, key in enumerate(REQRUN_ENCRYPTION_KEYS, start=1):
    try:
        Fernet(key)
    except ValueError:  # named by its place in the list, never repeated
        refuse(
            f"REQRUN_ENCRYPTION_KEYS: key {position} of {len(REQRUN_ENCRYPTION_KEYS)} is not a "
            f"Fernet key (32 url-safe base64-encoded bytes). {MAKE_A_FERNET_KEY}"
        )
REQRUN_ALLOW_PRIVATE_UPSTREAMS = flag("REQRUN_ALLOW_PRIVATE_UPSTREAMS", default=False)
REQRUN_DEFAULT_UPSTREAM_URL = "https://api.openai.com/v1"
# A worker's claim on an attempt lasts the attempt timeout plus this grace; after that the
# sweeper assumes the worker died and retries the request.
REQRUN_LEASE_GRACE_SECONDS = count("REQRUN_LEASE_GRACE_SECONDS", 30, minimum=0, maximum=DAY)
# Each upstream's circuit breaker (docs/failover.md): it opens after this many failures
# within the window, stays open for the cooldown (doubled after each failed probe, up to
# the maximum), then lets one probe through.
REQRUN_BREAKER_FAILURES = count("REQRUN_BREAKER_FAILURES", 5, minimum=1)
REQRUN_BREAKER_WINDOW_SECONDS = count("REQRUN_BREAKER_WINDOW_SECONDS", 60, minimum=1, maximum=DAY)
REQRUN_BREAKER_COOLDOWN_SECONDS = count(
    "REQRUN_BREAKER_COOLDOWN_SECONDS", 30, minimum=1, maximum=DAY
)
REQRUN_BREAKER_COOLDOWN_MAX_SECONDS = count(
    "REQRUN_BREAKER_COOLDOWN_MAX_SECONDS", 300, minimum=1, maximum=DAY
)
REQRUN_MAX_BODY_BYTES = count("REQRUN_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQRUN_MAX_BODY_BYTES + 1
# An upstream answer above this is dropped (502 upstream_response_too_large), not buffered.
REQRUN_MAX_RESPONSE_BYTES = count("REQRUN_MAX_RESPONSE_BYTES", 64 * 1024 * 1024, minimum=1)

# Prometheus at /metrics (core.metrics): for these addresses or networks, or with
# `Authorization: Bearer <REQRUN_METRICS_TOKEN>` (unset: no token accepted).
REQRUN_METRICS_ALLOWED_IPS = networks("REQRUN_METRICS_ALLOWED_IPS", ["127.0.0.1"])
REQRUN_METRICS_TOKEN = text("REQRUN_METRICS_TOKEN")
# A directory shared by the processes of one host and emptied before they start: each
# process writes its figures there, a scrape adds them up. Unset: per-process figures.
PROMETHEUS_MULTIPROC_DIR = text("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR and not Path(PROMETHEUS_MULTIPROC_DIR).is_dir():
    refuse(f"PROMETHEUS_MULTIPROC_DIR must name an existing directory: {PROMETHEUS_MULTIPROC_DIR}")

# Paddle billing; unset means billing is not configured.
PADDLE_ENVIRONMENT = choice("PADDLE_ENVIRONMENT", "sandbox", ("sandbox", "production"))
PADDLE_API_KEY = text("PADDLE_API_KEY")
PADDLE_CLIENT_TOKEN = text("PADDLE_CLIENT_TOKEN")
PADDLE_WEBHOOK_SECRET = text("PADDLE_WEBHOOK_SECRET")
# `pro:pri_…,team:pri_…` (the documented form; `pro=pri_…` works too) → {"pro": "pri_…"}.
PADDLE_PRICES = dict(
    (plan.strip(), price.strip())
    for plan, _, price in (
        item.replace("=", ":", 1).partition(":")
        for item in names("PADDLE_PRICES", [])
        if ":" in item or "=" in item
    )
)
PADDLE_API_BASE_URL = text("PADDLE_API_BASE_URL")
# How long a call to Paddle's API may wait for each read of its answer.
PADDLE_API_TIMEOUT_SECONDS = 10

# Celery: JSON only, at-least-once delivery, the database is the source of truth.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 15 * 60
CELERY_TASK_SOFT_TIME_LIMIT = 14 * 60
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# After a Redis loss, reconnect for as long as it takes (never give up and idle), and notice a
# dead connection through keepalive and periodic health checks rather than a hung read
# (broker_heartbeat is AMQP-only; on Redis, health_check_interval plays its part).
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_BROKER_CONNECTION_TIMEOUT = 5
# A Redis that answers but refuses (READONLY after a failover, OOM, a primary demoted under a
# waiting BRPOP: UNBLOCKED) is an outage too: reconnect and wait for it, rather than exit with
# "Unrecoverable error" and, restarted meanwhile, exit again at once.
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
# kombu's Redis transport, whose restore of unacked messages Redis refuses writes no file,
# and a consumer whose restarts back off to one every 8 s (core/broker.py). Named here, the
# transport no longer follows the URL's scheme: a rediss:// URL asks for TLS below, verified
# as the engine's client verifies it (the URL's own ssl_* options still apply).
CELERY_BROKER_TRANSPORT = "core.broker:Transport"
CELERY_BROKER_USE_SSL = (
    {"ssl_cert_reqs": ssl.CERT_REQUIRED} if REDIS_URL.startswith("rediss:") else False
)
# Attempts in flight run to their end when the broker connection is lost (Celery 6 would
# cancel them by default); their results go to PostgreSQL, not the broker.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # No acknowledgement emulation: PostgreSQL and the sweeper, not the broker, recover a
    # message a dead worker held (it only waits until the sweeper publishes it again). The
    # emulation's restore of unacked messages on reconnect is the code path that killed
    # workers (or left them alive but deaf) after a Redis loss, and costs several Redis
    # commands per task.
    "ack_emulation": False,
    "visibility_timeout": 15 * 60,
    "socket_keepalive": True,
    "socket_connect_timeout": 5,
    # A publish on a half-open connection fails after this instead of waiting forever.
    "socket_timeout": 10,
    "health_check_interval": 10,
}
# The schedule lives in PostgreSQL (django-celery-beat), so beat needs no local file; the
# entries below are installed into it each time beat starts.
CELERY_BEAT_SCHEDULER = "core.beat:Scheduler"
# Run by beat itself, never queued behind the work they rescue (see core/beat.py).
REQRUN_BEAT_INLINE_TASKS = ["requests_app.tasks.sweep_requests"]
# Only the beat holding this lease in PostgreSQL sends the schedule; another stands by and
# takes over this long after the leader died (at once when it stopped cleanly). Keep it
# well under /readyz's 30 s for a stale sweeper (core.heartbeats), or a killed leader's
# takeover makes every web unready for a moment.
REQRUN_BEAT_LEASE_SECONDS = seconds("REQRUN_BEAT_LEASE_SECONDS", 20.0)
# core.watchdog: every INTERVAL a worker sends itself a canary through Redis; one not consumed
# within TIMEOUT means the worker's consumer is gone, and the process exits to be restarted.
REQRUN_WATCHDOG_INTERVAL_SECONDS = seconds("REQRUN_WATCHDOG_INTERVAL_SECONDS", 10.0)
REQRUN_WATCHDOG_TIMEOUT_SECONDS = seconds("REQRUN_WATCHDOG_TIMEOUT_SECONDS", 60.0)
# core.shutdown: on SIGTERM a worker lets attempts in flight finish for this long, then exits.
REQRUN_WORKER_GRACE_SECONDS = seconds("REQRUN_WORKER_GRACE_SECONDS", 30.0, zero=True)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_ROUTES = {"requests_app.tasks.execute_request": {"queue": "requests"}}
REQRUN_SWEEP_INTERVAL_SECONDS = seconds("REQRUN_SWEEP_INTERVAL_SECONDS", 2.0)
CELERY_BEAT_SCHEDULE = {
    "worker-heartbeat": {"task": "core.tasks.record_worker_heartbeat", "schedule": 60.0},
    "billing-usage-notices": {"task": "billing.tasks.send_usage_notices", "schedule": 300.0},
    "billing-sweep": {"task": "billing.tasks.sweep_billing", "schedule": 300.0},
    "purge-expired-data": {"task": "requests_app.tasks.purge_expired_data", "schedule": 600.0},
    # Expires exports after seven days, re-queues lost ones, finishes account deletions.
    "privacy-sweep": {"task": "privacy.tasks.sweep_privacy", "schedule": 60.0},
    "sweep-requests": {
        "task": "requests_app.tasks.sweep_requests",
        "schedule": REQRUN_SWEEP_INTERVAL_SECONDS,
        "options": {"expires": 10},
    },
}

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "requests_app.errors.openai_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ReqRun API",
    "DESCRIPTION": "OpenAI-compatible reliability layer: queueing, retries, idempotency, status.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The /v1 views have no serializers: requests_app.api.schema describes them.
    "PREPROCESSING_HOOKS": ["requests_app.api.schema.v1_endpoints"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "requests_app.api.schema.add_components",
    ],
}

# Every process (web, worker, beat) logs through this: one JSON object per line (`json`, the
# default with DEBUG off) or readable lines (`console`, the default with DEBUG on). Both carry
# the allow-listed metadata fields of core/logs.py and nothing else.
LOG_FORMAT = choice("LOG_FORMAT", "console" if DEBUG else "json", ("json", "console"))
LOG_LEVEL = choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")).upper()
# uvicorn's line per HTTP request repeats what the request records say; off unless asked for.
ACCESS_LOG = flag("ACCESS_LOG", default=False)
# The Procfile's web listens on PORT; checked here, as uvicorn would listen on another port
# (PORT modulo 65536) than the one asked for.
count("PORT", 8000, minimum=1, maximum=65535)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "bound": {"()": "core.logs.BoundFields"},
        "api_answers": {"()": "core.logs.ApiAnswers"},
        "task_failures": {"()": "core.logs.TaskFailures"},
        "repeats": {"()": "core.logs.Repeats"},
        "repeated_lines": {"()": "core.logs.RepeatedLines"},
        "settled_warnings": {"()": "core.logs.SettledWarnings"},
        "deliberate_aborts": {"()": "core.logs.DeliberateAborts"},
    },
    "formatters": {
        "json": {"()": "core.logs.JsonFormatter"},
        "console": {"()": "core.logs.ConsoleFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["bound"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Listed loggers lose the handlers Django and uvicorn gave them and propagate to the
        # root's one handler, so their lines have the same format as ours.
        "django": {"level": "INFO"},
        "uvicorn": {"level": "INFO", "propagate": True},
        # A download cut on purpose was logged by ReqRun as a warning: not again as an error.
        "uvicorn.error": {"filters": ["deliberate_aborts"]},
        "uvicorn.access": {"level": "INFO" if ACCESS_LOG else "WARNING", "propagate": True},
        "django.request": {"level": "ERROR", "filters": ["api_answers"]},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # Under Paddle's SDK: at DEBUG it writes each URL, and the customer search's holds
        # the owner's email (`GET /customers?email=…`).
        "urllib3": {"level": "WARNING"},
        # Celery's two lines per task (received, succeeded) repeat what the executor's
        # "attempt finished" / "request finished" lines say with the request id.
        "celery.app.trace": {"level": "WARNING", "filters": ["task_failures"]},
        "celery.worker.strategy": {"level": "WARNING"},
        # Beat's line for each entry it sends: the 2 s sweep's once a minute (core/logs.py).
        "celery.beat": {"filters": ["repeated_lines"]},
        # kombu warns each second while a full Redis refuses what it refreshes (core/logs.py).
        "kombu.transport.redis": {"filters": ["repeats"]},
        # psycopg_pool warns at each failed try to open a connection (`error connecting in
        # 'pool-1': … FATAL: sorry, too many clients already`): its reason, once a minute.
        "psycopg.pool": {"filters": ["repeats"]},
        "py.warnings": {"filters": ["settled_warnings"]},
    },
}
