import django.db.models.deletion
from django.db import migrations, models

# Each month's count moves to the month's first stripe; the other stripes are made by the
# month's next accept (core/stripes.py).
COPY_COUNTS = """
INSERT INTO projects_usagestripe (account_id, period_start, stripe, accepted)
SELECT account_id, period_start, 0, accepted_requests FROM projects_monthlyusage
"""
COPY_BACK = """
UPDATE projects_monthlyusage AS usage SET accepted_requests = (
    SELECT COALESCE(sum(accepted), 0) FROM projects_usagestripe AS stripe
    WHERE stripe.account_id = usage.account_id AND stripe.period_start = usage.period_start
)
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_account_closing_since"),
        ("projects", "0013_plan_price_id_paddles_and_unique"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageStripe",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("period_start", models.DateField()),
                ("stripe", models.PositiveSmallIntegerField()),
                ("accepted", models.BigIntegerField(default=0)),
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
                    models.UniqueConstraint(
                        fields=("account", "period_start", "stripe"), name="one_usage_stripe"
                    )
                ],
            },
        ),
        migrations.RunSQL(COPY_COUNTS, reverse_sql=COPY_BACK),
        migrations.RemoveField(model_name="monthlyusage", name="accepted_requests"),
    ]
