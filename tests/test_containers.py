"""The container image and compose.yaml run the Procfile's processes as written.

Building and booting them needs a container engine, which the suite does not assume:
`make container-check` does that (README "Containers"). These tests hold what it relies on.
"""

import os
import signal
import subprocess
import sys

import httpx
import psutil
import pytest
import yaml

from devstack.__main__ import read_procfile
from devstack.servers import free_port
from tests.conftest import ROOT, wait_until

# What the processes import and read at run time: none of it may be left out of the image.
RUNTIME = [
    "accounts",
    "billing",
    "core",
    "devstack",
    "privacy",
    "projects",
    "reqrun",
    "requests_app",
    "static",
    "templates",
    "Procfile",
    "manage.py",
    "pyproject.toml",
]


def test_a_procfile_line_runs_by_name_as_the_image_runs_it(db):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "REQRUN_BIND_ADDRESS": "127.0.0.1"}
    web = subprocess.Popen(
        [sys.executable, "-m", "devstack", "proc", "web"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def answers() -> bool:
            assert web.poll() is None, web.stderr.read().decode(errors="replace")[-2000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=60, interval=0.2, message="the web line never answered")
        # The line's own program is the process (a container's PID 1 gets the signals), not
        # a shell around it that SIGTERM would end while the server went on.
        assert "uvicorn" in " ".join(psutil.Process(web.pid).cmdline())
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(timeout=30)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_an_unknown_process_name_says_which_there_are():
    ran = subprocess.run(
        [sys.executable, "-m", "devstack", "proc", "scheduler"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2
    assert "usage: python -m devstack proc {web|worker|beat}" in ran.stderr


def test_compose_runs_each_procfile_process_from_the_one_image():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in read_procfile():
        assert services[name]["command"] == [name]
        assert services[name]["image"] == services["migrate"]["image"]
    assert services["migrate"]["entrypoint"] == ["python", "manage.py"]
    assert services["migrate"]["command"][0] == "migrate"
    # Web, worker and beat share one metrics directory, and wait for the migration.
    for name in read_procfile():
        assert "metrics:/var/lib/reqrun/metrics" in services[name]["volumes"]
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "devstack", "proc"]' in dockerfile
    assert "\nUSER reqrun\n" in dockerfile


def test_the_image_leaves_out_nothing_the_processes_need():
    ignored = {
        line.strip().strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert "tests" in ignored and ".venv" in ignored  # the parse works
    assert not ignored & set(RUNTIME)
    assert all((ROOT / path).exists() for path in RUNTIME)
