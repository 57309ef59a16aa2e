"""The sink registry is the one place a sink kind is declared: these pin that nothing else must agree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vap_video.pipeline.config import ConfigError
from vap_video.pipeline.settings import parse_settings
from vap_video.pipeline.sinks import KINDS, JsonlSink, JsonlSinkConfig, build_sink
from vap_video.pipeline.sinks.registry import SINK_MODULES

SINKS_DIR = Path(__file__).resolve().parents[1] / "vap_video" / "pipeline" / "sinks"


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
    assert len(KINDS) == len(SINK_MODULES) and {"jsonl", "mqtt", "kafka", "webhook", "redis"} <= set(KINDS)
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


def _readme_recipe() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- sink-recipe:start -->", 1)[1].split("<!-- sink-recipe:end -->", 1)[0]
    return block.split("```python", 1)[1].rsplit("```", 1)[0]


def test_readme_sink_recipe_is_a_working_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "add a sink" recipe is real code: as a module it registers a kind whose sink
    delivers every event through the runner."""
    import json
    import socket
    import sys
    import types

    from vap_video.pipeline.events import make_event
    from vap_video.pipeline.metrics import Metrics
    from vap_video.pipeline.sinks import EventFilter, SinkKind, SinkRunner

    module = types.ModuleType("vap_video.pipeline.sinks.udp_recipe")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # pydantic resolves names there
    exec(compile(_readme_recipe(), "README.md#sink-recipe", "exec"), module.__dict__)
    kind = module.KIND
    assert isinstance(kind, SinkKind) and kind.type == "udp" and kind.type not in KINDS

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    cfg = kind.config(port=receiver.getsockname()[1])
    assert not cfg.spool.enabled
    sink = kind.sink(cfg)
    runner = SinkRunner(sink, EventFilter(), Metrics())
    events = [make_event("track.start", "cam", 1.0 + i, track_id=i) for i in range(3)]
    try:
        assert runner.offer(events, block_s=1.0)
        got = [receiver.recv(65536) for _ in events]
    finally:
        runner.close(5.0)
        receiver.close()
    assert [json.loads(g)["id"] for g in got] == [e["id"] for e in events]


def test_registering_the_recipe_is_one_module_and_one_line(tmp_path: Path) -> None:
    """Follow the README literally on a copy of the package: save the recipe as a module, add its
    name to SINK_MODULES, and `sinks: [{type: udp}]` validates, builds and is documented."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "vap_video", tmp_path / "vap_video",
                    ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.pt"))
    (tmp_path / "vap_video" / "pipeline" / "sinks" / "udp.py").write_text(_readme_recipe())
    registry = tmp_path / "vap_video" / "pipeline" / "sinks" / "registry.py"
    text = registry.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("SINK_MODULES"))
    registry.write_text(text.replace(line, line.replace('"redis")', '"redis", "udp")')))
    child = (
        "from vap_video.pipeline.settings import parse_settings\n"
        "from vap_video.pipeline.sinks import build_sink\n"
        "from vap_video.pipeline.tools.docs import config_reference\n"
        "s = parse_settings({'streams': [{'name': 'a', 'url': 'a.mp4'}], 'sinks': [{'type': 'udp', 'port': 9}]})\n"
        "sink = build_sink(s.sinks[0]); print(type(sink).__name__); sink.close()\n"
        "print('udp' in config_reference())\n"
        "try:\n"
        "    parse_settings({'streams': [{'name': 'a', 'url': 'a.mp4'}], 'sinks': [{'type': 'nope'}]})\n"
        "except Exception as e:\n"
        "    print('udp' in str(e))\n"
    )
    proc = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["UdpSink", "True", "True"], proc.stdout
