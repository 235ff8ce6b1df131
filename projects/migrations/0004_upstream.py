"""A project's upstreams become an ordered list: each project's single upstream (base URL,
encrypted provider key and its last four characters) becomes its `primary`."""

import django.db.models.deletion
from django.db import migrations, models


def move_single_upstreams(apps, schema_editor):
    """One `primary` upstream at position 0 per project, from the project's own fields."""
    Project = apps.get_model("projects", "Project")
    Upstream = apps.get_model("projects", "Upstream")
    projects = Project.objects.exclude(upstreams__isnull=False).values_list(
        "pk", "upstream_base_url", "provider_key_encrypted", "provider_key_last4"
    )
    Upstream.objects.bulk_create(
        [
            Upstream(
                project_id=pk,
                name="primary",
                position=0,
                base_url=base_url,
                provider_key_encrypted=key,
                provider_key_last4=last4,
                model_map={},
                enabled=True,
            )
            for pk, base_url, key, last4 in projects.iterator()
        ],
        batch_size=500,
    )


def move_primaries_back(apps, schema_editor):
    """Reverse: the primary's URL and key go back onto the project (fallbacks are lost)."""
    Project = apps.get_model("projects", "Project")
    Upstream = apps.get_model("projects", "Upstream")
    for upstream in Upstream.objects.order_by("project_id", "-position", "-pk"):
        Project.objects.filter(pk=upstream.project_id).update(
            upstream_base_url=upstream.base_url,
            provider_key_encrypted=upstream.provider_key_encrypted,
            provider_key_last4=upstream.provider_key_last4,
        )


class Migration(migrations.Migration):
    dependencies = [("projects", "0003_plan_upstreams_per_project")]

    operations = [
        migrations.CreateModel(
            name="Upstream",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.SlugField(max_length=40)),
                ("position", models.PositiveSmallIntegerField(default=0)),
                (
                    "base_url",
                    models.URLField(default="https://api.openai.com/v1", max_length=500),
                ),
                ("provider_key_encrypted", models.BinaryField(blank=True, null=True)),
                (
                    "provider_key_last4",
                    models.CharField(blank=True, editable=False, max_length=4),
                ),
                ("model_map", models.JSONField(blank=True, default=dict)),
                ("enabled", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "project",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="upstreams",
                        to="projects.project",
                    ),
                ),
            ],
            options={
                "ordering": ["position", "pk"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("project", "name"), name="upstream_name_unique_in_project"
                    )
                ],
            },
        ),
        migrations.RunPython(move_single_upstreams, move_primaries_back),
    ]
