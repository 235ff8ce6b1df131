"""The garbage collector's settings for server processes (core/collector.py)."""

import gc
import json
import subprocess
import sys
import weakref

import pytest

from core import collector
from tests.conftest import ROOT


@pytest.fixture
def restored_collector():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class Node:
    def __init__(self):
        self.other = self


def test_settle_freezes_what_is_alive_and_collects_young_objects_less_often(restored_collector):
    collector.settle()

    assert gc.get_freeze_count() > 10_000  # this test process's modules, at least
    assert gc.get_threshold()[0] == collector.YOUNG_THRESHOLD
    # Garbage made afterwards is still collected.
    cycle = Node()
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None


def test_the_web_application_settles_once_it_is_loaded():
    probe = (
        "import gc, json, reqrun.asgi; "
        "print(json.dumps([gc.get_freeze_count(), gc.get_threshold()[0]]))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout

    frozen, young_threshold = json.loads(output.strip().splitlines()[-1])
    assert frozen > 10_000
    assert young_threshold == collector.YOUNG_THRESHOLD
