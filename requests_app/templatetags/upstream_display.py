"""The project page's upstream health: breaker state and the last hour's attempts, read
here so that projects' templates show them without projects importing requests_app."""

from django import template

from requests_app.dashboard.selectors import UpstreamHealth, upstream_health

register = template.Library()


@register.simple_tag(name="upstream_health")
def upstream_health_of(project) -> dict[str, UpstreamHealth]:
    """`{% upstream_health project as health %}`: every upstream's health, in one read."""
    return upstream_health(project)


@register.inclusion_tag("projects/_upstream_health.html")
def upstream_health_cells(health: dict[str, UpstreamHealth], upstream_name: str) -> dict:
    """The breaker and last-hour cells of one upstream's row in the upstreams table."""
    return {"health": health.get(upstream_name)}
