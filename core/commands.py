"""The base of ReqRun's management commands: run against a database that does not answer
or is not migrated, a command says so in one line and exits 1, never a traceback."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core import schema


def does_not_answer() -> str:
    database = settings.DATABASES["default"]
    return (
        f"PostgreSQL at {database['HOST'] or 'localhost'}:{database['PORT'] or 5432} does not "
        "answer: check DATABASE_URL and that the server is up, then run the command again."
    )


class DatabaseCommand(BaseCommand):
    # Django's own check prints a warning for pending migrations and runs the command anyway.
    requires_migrations_checks = False
    # Whether the command needs every migration applied before it starts.
    needs_migrated_schema = True

    def execute(self, *args, **options):
        try:
            if self.needs_migrated_schema and (pending := schema.pending_migrations()):
                raise CommandError(schema.not_migrated_message(pending))
            return super().execute(*args, **options)
        except schema.DOES_NOT_ANSWER as error:
            raise CommandError(does_not_answer()) from error
