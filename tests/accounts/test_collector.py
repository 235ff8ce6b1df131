"""The garbage collector's settings for server processes (core/collector.py)."""

import gc
import subprocess
import sys
import weakref

import pytest

from core import collector
from tests.conftest import ROOT


@pytest.fixture
def unfrozen():
    """This process as if it had not settled (the in-process test server's import settles)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    def __init__(self):
        self.other = self


def test_settle_freezes_what_is_alive_and_still_collects_what_comes_after(unfrozen):
    assert gc.get_freeze_count() == 0

    collector.settle()

    assert gc.get_freeze_count() > 10_000  # this test process's modules, at least
    # Garbage made afterwards is still collected.
    cycle = Node()
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None


def test_the_web_application_settles_once_it_is_loaded():
    probe = "import gc, reqrun.asgi; print(gc.get_freeze_count())"
    output = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout

    assert int(output.strip().splitlines()[-1]) > 10_000
