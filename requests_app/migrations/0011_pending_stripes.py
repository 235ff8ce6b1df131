import django.db.models.deletion
from django.db import migrations, models

# Every stripe of each account that has a pending count (core/stripes.py: 64), its count in
# the first: the conclusions give slots back to any of them.
COPY_COUNTS = """
INSERT INTO requests_app_pendingstripe (account_id, stripe, pending)
SELECT account_id, stripe, CASE WHEN stripe = 0 THEN pending ELSE 0 END
FROM requests_app_pendingcount, generate_series(0, 63) AS stripe
"""
COPY_BACK = """
INSERT INTO requests_app_pendingcount (account_id, pending)
SELECT account_id, sum(pending) FROM requests_app_pendingstripe GROUP BY account_id
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_account_closing_since"),
        ("requests_app", "0010_daily_usage_unreported"),
    ]

    operations = [
        migrations.CreateModel(
            name="PendingStripe",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("stripe", models.PositiveSmallIntegerField()),
                ("pending", models.IntegerField(default=0)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="accounts.account",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("account", "stripe"), name="one_pending_stripe")
                ],
            },
        ),
        migrations.RunSQL(COPY_COUNTS, reverse_sql=COPY_BACK),
        migrations.DeleteModel(name="PendingCount"),
    ]
