"""The upstream lives only in Upstream now (one fact, one table). A separate migration from
the data move, so PostgreSQL has no pending foreign-key checks when the columns go."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("projects", "0004_upstream")]

    operations = [
        migrations.RemoveField(model_name="project", name="upstream_base_url"),
        migrations.RemoveField(model_name="project", name="provider_key_encrypted"),
        migrations.RemoveField(model_name="project", name="provider_key_last4"),
    ]
