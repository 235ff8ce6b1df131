"""The old file column (`AccountExport.content`) leaves the database.

0004 took it off the model and emptied it, one release ago, and kept it for the processes
of the release before, which still selected it during that deploy. No process of the last
release names it, so it can go now. The field is already gone from Django's state: this
migration has database operations only. Going back adds it again, nullable and empty, as
0004 left it."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("privacy", "0004_remove_accountexport_content"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE privacy_accountexport DROP COLUMN IF EXISTS content",
                    reverse_sql=(
                        "ALTER TABLE privacy_accountexport"
                        " ADD COLUMN IF NOT EXISTS content bytea NULL"
                    ),
                ),
            ],
        ),
    ]
