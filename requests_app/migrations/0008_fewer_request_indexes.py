"""Drop the indexes that others already cover, without rebuilding anything.

Every index of `requests_app_request` gets an entry on each insert, claim and conclusion
(neither update can be HOT: `status` is indexed), so an index no query needs costs every
request. Covered by indexes that lead with the same column:

- `account_id` by `request_account_created` (account, created_at);
- `project_id` by `request_project_newest` (project, -public_id);
- the attempt's `request_id` by `one_row_per_attempt` (request, number);
- `public_id`'s `varchar_pattern_ops` copy (for LIKE, which nothing runs) by its unique
  index.

Django's own AlterField for `db_index=False` would also drop and re-add each foreign key,
validating every row under a lock that stalls accepts on a large table; here the state
changes alone and the database only drops the indexes, concurrently.
"""

import django.db.models.deletion
from django.db import migrations, models

DROPPED = [  # (index, table, what it indexed)
    ("requests_app_request_account_id_c2f90770", "requests_app_request", "account_id"),
    ("requests_app_request_project_id_224d0e06", "requests_app_request", "project_id"),
    ("requests_app_attempt_request_id_3e165f50", "requests_app_attempt", "request_id"),
    (
        "requests_app_request_public_id_8d404aca_like",
        "requests_app_request",
        "public_id varchar_pattern_ops",
    ),
]


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("accounts", "0001_initial"),
        ("projects", "0008_upstream_breaker_index"),
        ("requests_app", "0007_response_kept_index"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="attempt",
                    name="request",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="attempts",
                        to="requests_app.request",
                    ),
                ),
                migrations.AlterField(
                    model_name="request",
                    name="account",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="accounts.account",
                    ),
                ),
                migrations.AlterField(
                    model_name="request",
                    name="project",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="requests",
                        to="projects.project",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
                    reverse_sql=f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} "
                    f"ON {table} ({indexed})",
                )
                for name, table, indexed in DROPPED
            ],
        ),
    ]
