"""Re-encrypt every secret at rest under the primary key of REQRUN_ENCRYPTION_KEYS."""

from accounts.mfa import rotate_authenticator_secrets
from core.commands import DatabaseCommand
from privacy.services import rotate_exports
from projects.upstreams import rotate_provider_keys
from requests_app.engine.accept import rotate_request_bodies


class Command(DatabaseCommand):
    help = (
        "Re-encrypt provider keys, stored request/response bodies, export files and two-factor "
        "secrets under the first key of REQRUN_ENCRYPTION_KEYS. Afterwards older keys can be "
        "removed from the list."
    )

    def handle(self, *args, **options):
        keys = rotate_provider_keys()
        bodies = rotate_request_bodies()
        exports = rotate_exports()
        authenticators = rotate_authenticator_secrets()
        self.stdout.write(
            f"Re-encrypted {keys} provider key(s) and {bodies} request record(s) and "
            f"{exports} export chunk(s) and {authenticators} two-factor authenticator(s) under "
            "the primary key. Older keys can now be removed from REQRUN_ENCRYPTION_KEYS."
        )
