"""Shared fixtures."""

from __future__ import annotations

import pytest

from vap_video.pipeline.metrics import Metrics
from vap_video.pipeline.supervisor import Supervisor
from tests.collector import Collector


@pytest.fixture()
def rig():
    """A Supervisor whose emit and state changes go to a Collector; stopped after the test."""
    col = Collector()
    metrics = Metrics()
    sup = Supervisor(col.emit, metrics, col.on_state)
    yield col, metrics, sup
    sup.stop_all(timeout=5)
