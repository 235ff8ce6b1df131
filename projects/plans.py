"""The four plans of the product brief, as seeded into the Plan table."""

from django.conf import settings

# code, name, cents, self-serve, projects, keys/project, monthly requests, retention days,
# pending cap, concurrency, requests/minute, max attempts, members, upstreams/project
PLANS = [
    ("free", "Free", 0, True, 1, 2, 10_000, 3, 100, 4, 60, 3, 1, 1),
    ("pro", "Pro", 2900, True, 5, 10, 500_000, 14, 5_000, 32, 1_200, 6, 3, 2),
    ("team", "Team", 19900, True, 25, 50, 5_000_000, 30, 50_000, 128, 6_000, 10, 25, 5),
    (
        "enterprise",
        "Enterprise",
        None,
        False,
        1_000,
        1_000,
        100_000_000,
        90,
        1_000_000,
        1_000,
        600_000,
        10,
        1_000,
        10,
    ),
]


def seed_plans(plan_model) -> None:
    """Create or refresh the plan rows; takes the model so migrations can pass theirs (a
    limit the model does not have yet at that migration is left for a later one to set)."""
    fields = {field.name for field in plan_model._meta.get_fields()}
    for order, row in enumerate(PLANS):
        (
            code,
            name,
            cents,
            self_serve,
            projects,
            keys,
            monthly,
            retention,
            pending,
            concurrency,
            rpm,
            attempts,
            members,
            upstreams,
        ) = row
        values = dict(
            name=name,
            price_cents_monthly=cents,
            self_serve=self_serve,
            sort_order=order,
            paddle_price_id=settings.PADDLE_PRICES.get(code, ""),
            projects=projects,
            api_keys_per_project=keys,
            monthly_requests=monthly,
            retention_days=retention,
            pending_requests=pending,
            concurrency=concurrency,
            requests_per_minute=rpm,
            max_attempts=attempts,
            members=members,
            upstreams_per_project=upstreams,
        )
        defaults = {field: value for field, value in values.items() if field in fields}
        plan_model.objects.update_or_create(code=code, defaults=defaults)
