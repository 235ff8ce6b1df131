"""Seed the four plans of the product brief; price ids come from PADDLE_PRICES."""

from django.db import migrations

from projects.plans import seed_plans


def seed(apps, schema_editor):
    seed_plans(apps.get_model("projects", "Plan"))


class Migration(migrations.Migration):
    dependencies = [("projects", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
