"""`/metrics` for Prometheus: every process's figures, for allow-listed addresses or a token.

With PROMETHEUS_MULTIPROC_DIR set, each web, worker and beat process of the host writes
its counters there and a scrape adds them up; without it (development, tests) a scrape
shows the serving process alone. Gauges read at scrape time (the queue in PostgreSQL, the
heartbeats in Redis) are collectors passed in by the URL wiring, so this bottom layer
needs no app above it. Anyone else gets the site's 404: the endpoint is not advertised.
"""

import hmac
import ipaddress
import logging
from collections.abc import Iterable

from django.conf import settings
from django.http import Http404, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from core import heartbeats
from core.client_address import client_ip_of, configured_networks

logger = logging.getLogger(__name__)


def may_scrape(request) -> bool:
    """The client's address is allow-listed (an address or a network), or it shows the token.

    The client's address as the rate limits read it (core.client_address), not the peer: a
    server that does not rewrite the peer from X-Forwarded-For sees 127.0.0.1 for everyone
    behind a proxy on the same host, and uvicorn trusting every peer (`*`) makes the client's
    own leftmost hop the peer.
    """
    token = settings.REQRUN_METRICS_TOKEN
    if token:
        presented = request.META.get("HTTP_AUTHORIZATION", "")
        if hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
            return True
    address = client_ip_of(request.META)
    if address is None:
        return False
    client = ipaddress.ip_address(address)
    allowed = configured_networks("REQRUN_METRICS_ALLOWED_IPS")
    return any(client in network for network in allowed)


class HeartbeatCollector(Collector):
    """Seconds since the sweeper and a worker last showed signs of life (core.heartbeats)."""

    def collect(self):
        try:
            beats = heartbeats.current()
        except Exception:
            logger.warning("metrics: heartbeats not readable")
            return
        family = GaugeMetricFamily(
            "reqrun_heartbeat_age_seconds",
            "Seconds since the process last recorded its heartbeat (absent: never seen).",
            labels=["process"],
        )
        for beat in beats:
            if beat.age_seconds is not None:
                family.add_metric([beat.name], beat.age_seconds)
        yield family


class _ThisProcess(Collector):
    """The default registry of the serving process, when there is no shared directory."""

    def collect(self):
        return REGISTRY.collect()


def exposition(collectors: Iterable[Collector]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    if settings.PROMETHEUS_MULTIPROC_DIR:
        MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    else:
        registry.register(_ThisProcess())
    for collector in (HeartbeatCollector(), *collectors):
        registry.register(collector)
    return generate_latest(registry)


def metrics_view(*, collectors: Iterable[Collector] = ()):
    """The /metrics view, with `collectors` read at each scrape besides the counters."""
    collectors = tuple(collectors)

    @require_GET
    def metrics(request):
        if not may_scrape(request):
            raise Http404("No such page.")
        return HttpResponse(exposition(collectors), content_type=CONTENT_TYPE_LATEST)

    return metrics
