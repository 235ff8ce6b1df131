"""Django's `migrate`, saying in one line that the database does not answer."""

from django.core.management.commands.migrate import Command as DjangoMigrate

from core.commands import DatabaseCommand


class Command(DatabaseCommand, DjangoMigrate):
    needs_migrated_schema = False
