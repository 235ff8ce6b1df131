"""/metrics: figures from the web and the worker processes added up, read as Prometheus does,
and shown only to allow-listed addresses or the bearer of the token."""

import os
import socket
import subprocess
import sys
import threading
from datetime import timedelta

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from projects.models import Upstream
from requests_app import metrics
from requests_app.api.schema import SCHEMA_URL
from tests.conftest import ROOT, WorkerProcess, wait_until
from tests.conftest import test_database_url as database_url
from tests.factories import ProjectFactory

TOKEN = "metrics-test-token"
CHAT = [{"role": "user", "content": "metrics"}]
ENDPOINT = "/v1/chat/completions"


class WebProcess(WorkerProcess):
    """The ASGI application under uvicorn in a process of its own, as `web` runs."""

    def __init__(self, *, extra_env: dict):
        super().__init__(extra_env=extra_env)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log_path = ROOT / ".data" / f"test-web-{os.getpid()}.log"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "reqrun.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--lifespan",
            "off",
            "--log-level",
            "warning",
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture(scope="module")
def metered(worker, tmp_path_factory):
    """A web and a worker process sharing one metrics directory, as on a real host.

    The session's worker writes no figures there, so it is stopped meanwhile.
    """
    shared = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("metrics"))}
    worker.stop()
    own_worker = WorkerProcess(extra_env={**shared, "REQRUN_LEASE_GRACE_SECONDS": "1"}).start()
    web = WebProcess(
        extra_env={
            **shared,
            "REQRUN_METRICS_TOKEN": TOKEN,
            "REQRUN_METRICS_ALLOWED_IPS": "192.0.2.1",  # not the tests' loopback address
        }
    ).start()
    try:
        wait_until(web.answers, timeout=30, message="the web process did not start")
        yield web, shared
    finally:
        web.stop()
        own_worker.stop()
        worker.start()


def scrape(web) -> dict:
    response = httpx.get(f"{web.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def figure(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def call(web, tenant, model: str, **headers) -> httpx.Response:
    return httpx.post(
        f"{web.url}{ENDPOINT}",
        json={"model": model, "messages": CHAT},
        headers={"Authorization": f"Bearer {tenant.raw_key}", **headers},
        timeout=60,
    )


@pytest.mark.worker
def test_the_web_and_the_worker_processes_are_counted_together(tenant, metered):
    web, shared = metered
    before = scrape(web)

    for _ in range(3):
        assert call(web, tenant, "gpt-test").status_code == 200
    assert call(web, tenant, "script:503,200").status_code == 200  # one retry, then success
    unauthenticated = httpx.post(f"{web.url}{ENDPOINT}", json={"model": "gpt-test"})
    assert unauthenticated.status_code == 401
    # A sweep in a process of its own (beat's job), which exits before the scrape.
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from requests_app.engine.recovery import sweep; sweep()",
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), **shared},
        check=True,
        capture_output=True,
    )
    after = scrape(web)

    def grew(name: str, **labels) -> float:
        return figure(after, name, **labels) - figure(before, name, **labels)

    # Counted by the web process.
    assert grew("reqrun_api_requests_accepted_total", endpoint=ENDPOINT, outcome="created") == 4
    refused = grew(
        "reqrun_api_requests_refused_total", endpoint=ENDPOINT, status="401", code="invalid_api_key"
    )
    assert refused == 1
    # Counted by the worker process.
    assert grew("reqrun_attempts_total", outcome="success") == 4
    assert grew("reqrun_attempts_total", outcome="retryable_error") == 1
    assert grew("reqrun_requests_finished_total", status="succeeded") == 4
    assert grew("reqrun_upstream_latency_seconds_count", outcome="success") == 4
    assert grew("reqrun_upstream_latency_seconds_count", outcome="retryable_error") == 1
    assert grew("reqrun_queue_wait_seconds_count") == 4  # first attempts only
    # Counted by the sweeping process, gone by now.
    assert grew("reqrun_sweeps_total") == 1
    assert ("reqrun_heartbeat_age_seconds", (("process", "sweeper"),)) in after
    # Read from PostgreSQL at scrape time.
    for status in ("queued", "retrying", "running"):
        assert figure(after, "reqrun_requests_active", status=status) == 0
        assert ("reqrun_requests_active", (("status", status),)) in after
    assert ("reqrun_oldest_queued_request_age_seconds", ()) in after
    # Each process's files are named by its host and PID (containers sharing the directory
    # are each PID 1), and every process that counted above wrote its own.
    names = os.listdir(shared["PROMETHEUS_MULTIPROC_DIR"])
    writers = {name.rsplit("_", 1)[1] for name in names if name.startswith("counter_")}
    assert len(writers) >= 3, names  # the web, the worker, the sweeping process
    assert all(writer.startswith(f"{socket.gethostname()}-") for writer in writers), names
    # No request id, key or project reaches a label.
    text = httpx.get(f"{web.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    for secret in ("req_", tenant.raw_key, tenant.project.public_id, "gpt-test"):
        assert secret not in text


@pytest.mark.worker
def test_waiting_callers_and_open_streams_are_gauges_of_now(tenant, metered):
    web, _ = metered
    waiting = threading.Thread(target=call, args=(web, tenant, "sleep-2500"), daemon=True)
    waiting.start()
    wait_until(
        lambda: figure(scrape(web), "reqrun_waiting_callers") == 1,
        timeout=20,
        message="the waiting caller was not counted",
    )
    # The caller waits from its accept on; its request runs once the worker has claimed it.
    wait_until(
        lambda: figure(scrape(web), "reqrun_requests_active", status="running") == 1,
        timeout=20,
        message="the waiting caller's request was not counted running",
    )
    waiting.join(30)
    wait_until(lambda: figure(scrape(web), "reqrun_waiting_callers") == 0, timeout=10)

    received = []

    def read_stream():
        body = {"model": "script:slowchunks400", "messages": CHAT, "stream": True}
        headers = {"Authorization": f"Bearer {tenant.raw_key}"}
        with httpx.stream("POST", f"{web.url}{ENDPOINT}", json=body, headers=headers) as stream:
            received.extend(stream.iter_raw())

    streaming = threading.Thread(target=read_stream, daemon=True)
    streaming.start()
    wait_until(
        lambda: figure(scrape(web), "reqrun_open_streams") == 1,
        timeout=20,
        message="the open stream was not counted",
    )
    streaming.join(30)
    assert b"[DONE]" in b"".join(received)
    wait_until(lambda: figure(scrape(web), "reqrun_open_streams") == 0, timeout=10)


def test_a_process_drops_the_live_gauges_its_namesake_left_and_keeps_its_counters(
    tmp_path, monkeypatch
):
    """A restarted container has its predecessor's host name and PID: the callers that one
    held are gone with it, while counters go on from where they were."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored afterwards
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    name = metrics.process_name()
    left = {kind: tmp_path / f"{kind}_{name}.db" for kind in ("gauge_livesum", "counter")}
    other = tmp_path / "gauge_livesum_elsewhere-1.db"
    for path in (*left.values(), other):
        path.write_bytes(b"")

    metrics.count_as_this_process(tmp_path)

    assert not left["gauge_livesum"].exists()
    assert left["counter"].exists()
    assert other.exists()  # another process's, alive or not, is not this one's to drop
    # What this process counts from now on goes to files under the same name.
    values.ValueClass("gauge", "m", "m", (), (), "", multiprocess_mode="livesum")
    assert (tmp_path / f"gauge_livesum_{name}.db").exists()


def test_only_allow_listed_addresses_or_the_token_may_scrape(metered):
    web, _ = metered
    url = f"{web.url}/metrics"
    # The test's loopback address is not on this web process's allow-list.
    assert httpx.get(url).status_code == 404
    assert httpx.get(url, headers={"Authorization": "Bearer wrong-token"}).status_code == 404
    assert httpx.get(url, headers={"Authorization": TOKEN}).status_code == 404  # no "Bearer"
    allowed = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200
    assert allowed.headers["Content-Type"].startswith("text/plain")
    assert "reqrun_requests_active" in allowed.text


def test_the_allow_list_takes_addresses_and_networks(client, db, settings):
    settings.REQRUN_METRICS_TOKEN = ""
    settings.REQRUN_METRICS_ALLOWED_IPS = ["127.0.0.1", "203.0.113.0/24"]
    assert client.get("/metrics").status_code == 200  # the test client's 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="198.51.100.7").status_code == 404
    # Without a configured token, no bearer is accepted, not even an empty one.
    refused = client.get("/metrics", REMOTE_ADDR="198.51.100.7", HTTP_AUTHORIZATION="Bearer ")
    assert refused.status_code == 404


@pytest.mark.parametrize(
    ("name", "entries"),
    [
        ("REQRUN_METRICS_ALLOWED_IPS", ["127.0.0.1", "prometheus.internal"]),
        ("REQRUN_TRUSTED_PROXIES", ["127.0.0.1", "prometheus.internal"]),
    ],
)
def test_an_entry_that_is_no_network_is_named_as_the_start_names_it(
    client, db, settings, name, entries
):
    """Both lists are read by one parser (settings.py refuses the same entry at start)."""
    settings.REQRUN_METRICS_TOKEN = ""
    setattr(settings, name, entries)

    with pytest.raises(ImproperlyConfigured) as refused:
        client.get("/metrics", REMOTE_ADDR="198.51.100.7")

    assert str(refused.value) == (
        f"{name}: 'prometheus.internal' is not an IP address or network (use e.g. "
        f"127.0.0.1,10.0.0.0/8{', or * behind a platform router' if 'PROXIES' in name else ''})."
    )


def test_a_client_forwarded_by_a_trusted_proxy_is_judged_by_its_own_address(client, db, settings):
    """Behind a proxy on this host every peer is 127.0.0.1, the default allow-list: the
    client's address is the one the proxy forwards, as the rate limits read it."""
    settings.REQRUN_METRICS_TOKEN = ""
    settings.REQRUN_METRICS_ALLOWED_IPS = ["127.0.0.1"]
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="198.51.100.7").status_code == 404
    assert client.get("/metrics").status_code == 200  # the proxy's (or the host's) own
    # Trusting every peer, uvicorn makes the leftmost hop, the client's own claim, the peer.
    settings.REQRUN_TRUSTED_PROXIES = ["*"]
    forged = client.get(
        "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1, 198.51.100.7"
    )
    assert forged.status_code == 404


def test_metrics_is_not_part_of_the_api_schema(client):
    schema = client.get(SCHEMA_URL).json()
    assert not any("metrics" in path for path in schema["paths"])


def test_breakers_that_are_not_closed_are_counted_at_scrape_time(client, db, settings):
    settings.REQRUN_METRICS_ALLOWED_IPS = ["127.0.0.1"]
    project = ProjectFactory()
    now = timezone.now()
    for name, open_until in [
        ("open", now + timedelta(seconds=30)),
        ("probing", now - timedelta(seconds=1)),
        ("closed", None),
    ]:
        Upstream.objects.create(project=project, name=name, breaker_open_until=open_until)

    text = client.get("/metrics").content.decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    assert figure(samples, "reqrun_upstream_breakers_not_closed", state="open") == 1
    assert figure(samples, "reqrun_upstream_breakers_not_closed", state="half_open") == 1
