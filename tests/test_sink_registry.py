"""The sink registry is the one place a sink kind is declared: these pin that nothing else must agree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.settings import parse_settings
from pipeline.sinks import KINDS, JsonlSink, JsonlSinkConfig, build_sink
from pipeline.sinks.registry import SINK_MODULES

SINKS_DIR = Path(__file__).resolve().parents[1] / "pipeline" / "sinks"


def _modules_defining_kind() -> set[str]:
    found = set()
    for path in SINKS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "KIND" for t in node.targets)
               for node in tree.body):
            found.add(path.stem)
    return found


def test_every_sink_module_is_registered_and_nothing_else() -> None:
    assert _modules_defining_kind() == set(SINK_MODULES)


def test_tags_come_from_each_config_type_field() -> None:
    assert list(KINDS) == ["jsonl", "mqtt", "kafka", "webhook", "redis"]
    for tag, kind in KINDS.items():
        assert kind.config.model_fields["type"].default == tag


def test_unknown_type_lists_every_registered_kind() -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"streams": [{"name": "a", "url": "a.mp4"}], "sinks": [{"type": "mqtt5"}]})
    message = str(err.value)
    assert "unknown sink type" in message
    for tag in KINDS:
        assert tag in message


def test_build_sink_uses_the_registered_class(tmp_path: Path) -> None:
    sink = build_sink(JsonlSinkConfig(path=tmp_path / "e.jsonl"))
    try:
        assert type(sink) is JsonlSink
    finally:
        sink.close()
