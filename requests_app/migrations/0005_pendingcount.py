import django.db.models.deletion
from django.db import migrations, models

# Every account's unfinished requests, counted once; from here on the engine keeps the count.
BACKFILL = """
INSERT INTO requests_app_pendingcount (account_id, pending)
SELECT account_id, count(*) FROM requests_app_request
WHERE status IN ('queued', 'running', 'retrying')
GROUP BY account_id
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("requests_app", "0004_daily_usage"),
    ]

    operations = [
        migrations.CreateModel(
            name="PendingCount",
            fields=[
                (
                    "account",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="+",
                        serialize=False,
                        to="accounts.account",
                    ),
                ),
                ("pending", models.IntegerField(default=0)),
            ],
        ),
        migrations.RunSQL(BACKFILL, reverse_sql=migrations.RunSQL.noop),
    ]
