"""Plans cap how many upstreams a project may have (Free 1, Pro 2, Team 5, Enterprise 10)."""

from django.db import migrations, models

UPSTREAMS_PER_PROJECT = {"free": 1, "pro": 2, "team": 5, "enterprise": 10}


def set_caps(apps, schema_editor):
    Plan = apps.get_model("projects", "Plan")
    for code, cap in UPSTREAMS_PER_PROJECT.items():
        Plan.objects.filter(code=code).update(upstreams_per_project=cap)


class Migration(migrations.Migration):
    dependencies = [("projects", "0002_seed_plans")]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="upstreams_per_project",
            field=models.PositiveIntegerField(default=1),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="accountplan",
            name="upstreams_per_project",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(set_caps, migrations.RunPython.noop),
    ]
