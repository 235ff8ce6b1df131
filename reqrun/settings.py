"""Django settings. Every value that differs between environments comes from the environment."""

import ssl
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from core.postgresql.pool import connection_given_up

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set. `make run` and `make test` set development values; "
        "in production set SECRET_KEY to a long random string."
    )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "core.csrf.csrf_failure"
# Addresses or networks of the proxies in front (comma-separated; `*` trusts every peer, only
# for platforms where nothing but their router can reach the app, whose hop alone is then
# believed). Only these may tell us the client's address in X-Forwarded-For; the Procfile
# passes the same list to uvicorn.
REQRUN_TRUSTED_PROXIES = env.list("REQRUN_TRUSTED_PROXIES", default=["127.0.0.1"])
# allauth's own X-Forwarded-For parsing counts hops without looking at the peer, so it stays
# off: accounts.adapter hands allauth the address from accounts.access.client_ip instead.
ALLAUTH_TRUSTED_PROXY_COUNT = 0
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = None

for required in ("DATABASE_URL", "REDIS_URL"):
    if not env.str(required, default=""):
        raise ImproperlyConfigured(
            f"{required} is not set. `make run` and `make test` start embedded servers and set "
            f"it for you; to run a process by hand, see `python -m devstack env`."
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

DATABASES = {"default": env.db_url("DATABASE_URL")}
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
if env.bool("DB_SERVER_SIDE_BINDING", default=True):
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 1
else:
    DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = None
DATABASES["default"]["OPTIONS"]["pool"] = {
    "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
    "max_size": env.int("DB_POOL_MAX_SIZE", default=40),
    "timeout": env.float("DB_POOL_TIMEOUT", default=30.0),
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

REDIS_URL = env.str("REDIS_URL")
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

if not DEBUG and not env.str("EMAIL_URL", default=""):
    raise ImproperlyConfigured(
        "EMAIL_URL is not set: with DEBUG off, verification and password-reset emails must be "
        "delivered, not written to the log. Set EMAIL_URL, e.g. "
        "smtp+tls://user:password@smtp.example.com:587 (DEBUG=true uses the console)."
    )
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
# Django waits on the mail server forever by default: one that accepts and never answers would
# hold the web or Celery worker sending the mail. A failed send is handled (docs/operations.md).
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="ReqRun <no-reply@reqrun.com>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
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
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
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
REQRUN_ENCRYPTION_KEYS = env.list("REQRUN_ENCRYPTION_KEYS", default=[])
if not REQRUN_ENCRYPTION_KEYS:
    raise ImproperlyConfigured(
        "REQRUN_ENCRYPTION_KEYS is not set: give one or more Fernet keys, primary first. "
        "Make one with: python -c 'from cryptography.fernet import Fernet; "
        "print(Fernet.generate_key().decode())'"
    )
REQRUN_ALLOW_PRIVATE_UPSTREAMS = env.bool("REQRUN_ALLOW_PRIVATE_UPSTREAMS", default=False)
REQRUN_DEFAULT_UPSTREAM_URL = "https://api.openai.com/v1"
# A worker's claim on an attempt lasts the attempt timeout plus this grace; after that the
# sweeper assumes the worker died and retries the request.
REQRUN_LEASE_GRACE_SECONDS = env.int("REQRUN_LEASE_GRACE_SECONDS", default=30)
# Each upstream's circuit breaker (docs/failover.md): it opens after this many failures
# within the window, stays open for the cooldown (doubled after each failed probe, up to
# the maximum), then lets one probe through.
REQRUN_BREAKER_FAILURES = env.int("REQRUN_BREAKER_FAILURES", default=5)
REQRUN_BREAKER_WINDOW_SECONDS = env.int("REQRUN_BREAKER_WINDOW_SECONDS", default=60)
REQRUN_BREAKER_COOLDOWN_SECONDS = env.int("REQRUN_BREAKER_COOLDOWN_SECONDS", default=30)
REQRUN_BREAKER_COOLDOWN_MAX_SECONDS = env.int("REQRUN_BREAKER_COOLDOWN_MAX_SECONDS", default=300)
REQRUN_MAX_BODY_BYTES = env.int("REQRUN_MAX_BODY_BYTES", default=10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQRUN_MAX_BODY_BYTES + 1
# An upstream answer above this is dropped (502 upstream_response_too_large), not buffered.
REQRUN_MAX_RESPONSE_BYTES = env.int("REQRUN_MAX_RESPONSE_BYTES", default=64 * 1024 * 1024)

# Prometheus at /metrics (core.metrics): for these addresses or networks, or with
# `Authorization: Bearer <REQRUN_METRICS_TOKEN>` (unset: no token accepted).
REQRUN_METRICS_ALLOWED_IPS = env.list("REQRUN_METRICS_ALLOWED_IPS", default=["127.0.0.1"])
REQRUN_METRICS_TOKEN = env.str("REQRUN_METRICS_TOKEN", default="")
# A directory shared by the processes of one host and emptied before they start: each
# process writes its figures there, a scrape adds them up. Unset: per-process figures.
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
if PROMETHEUS_MULTIPROC_DIR and not Path(PROMETHEUS_MULTIPROC_DIR).is_dir():
    raise ImproperlyConfigured("PROMETHEUS_MULTIPROC_DIR must name an existing directory.")

# Paddle billing; unset means billing is not configured.
PADDLE_ENVIRONMENT = env.str("PADDLE_ENVIRONMENT", default="sandbox")
PADDLE_API_KEY = env.str("PADDLE_API_KEY", default="")
PADDLE_CLIENT_TOKEN = env.str("PADDLE_CLIENT_TOKEN", default="")
PADDLE_WEBHOOK_SECRET = env.str("PADDLE_WEBHOOK_SECRET", default="")
# `pro:pri_…,team:pri_…` (the documented form; `pro=pri_…` works too) → {"pro": "pri_…"}.
PADDLE_PRICES = dict(
    (plan.strip(), price.strip())
    for plan, _, price in (
        item.replace("=", ":", 1).partition(":")
        for item in env.list("PADDLE_PRICES", default=[])
        if ":" in item or "=" in item
    )
)
PADDLE_API_BASE_URL = env.str("PADDLE_API_BASE_URL", default="")
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
REQRUN_BEAT_LEASE_SECONDS = env.float("REQRUN_BEAT_LEASE_SECONDS", default=20.0)
# core.watchdog: every INTERVAL a worker sends itself a canary through Redis; one not consumed
# within TIMEOUT means the worker's consumer is gone, and the process exits to be restarted.
REQRUN_WATCHDOG_INTERVAL_SECONDS = env.float("REQRUN_WATCHDOG_INTERVAL_SECONDS", default=10.0)
REQRUN_WATCHDOG_TIMEOUT_SECONDS = env.float("REQRUN_WATCHDOG_TIMEOUT_SECONDS", default=60.0)
# core.shutdown: on SIGTERM a worker lets attempts in flight finish for this long, then exits.
REQRUN_WORKER_GRACE_SECONDS = env.float("REQRUN_WORKER_GRACE_SECONDS", default=30.0)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_ROUTES = {"requests_app.tasks.execute_request": {"queue": "requests"}}
REQRUN_SWEEP_INTERVAL_SECONDS = env.float("REQRUN_SWEEP_INTERVAL_SECONDS", default=2.0)
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
LOG_FORMAT = env.str("LOG_FORMAT", default="console" if DEBUG else "json")
if LOG_FORMAT not in ("json", "console"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or console, not {LOG_FORMAT!r}.")
# uvicorn's line per HTTP request repeats what the request records say; off unless asked for.
ACCESS_LOG = env.bool("ACCESS_LOG", default=False)
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
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
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
