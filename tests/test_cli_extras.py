"""Commands on an install without their optional package name the extra; small CLI contracts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "vap_video" / "engines" / "models" / "vap-synth-n.onnx"


def vap_without(blocked: list[str], *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `vap ARGS` in a fresh interpreter where importing each of `blocked` fails as if not installed."""
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "from vap_video.pipeline.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("blocked,args,extra", [
    (["onnx"], ["quantize", str(MODEL), "--data", "data.yaml"], "vap-video[onnx]"),
    (["onnx"], ["build-engine", str(MODEL)], "vap-video[onnx]"),
    (["torch"], ["val", "best.pt", "--data", "data.yaml"], "vap-video[train]"),
    (["torch"], ["export", "best.pt", "--out", "m.onnx"], "vap-video[train]"),
])
def test_missing_optional_package_names_the_extra(tmp_path, blocked, args, extra):
    code, out = vap_without(blocked, *args)
    assert code == 2, out
    assert "Traceback" not in out and "ModuleNotFoundError" not in out
    assert f"needs {blocked[0]}, which is not installed" in out and extra in out


def test_version():
    from vap_video.pipeline import __version__

    code, out = vap_without([], "--version")
    assert code == 0 and out.strip() == f"vap {__version__}"


def test_unknown_log_level_is_a_usage_error():
    code, out = vap_without([], "--log-level", "loud", "schema")
    assert code == 2 and "unknown level 'loud'" in out and "debug, info, warning, error, critical" in out
    code, out = vap_without([], "schema", env={"VAP_LOG_LEVEL": "chatty"})
    assert code == 2 and "unknown level 'chatty'" in out
    code, _ = vap_without([], "--log-level", "WARNING", "schema")
    assert code == 0


def test_train_help_describes_every_option():
    from vap_video.engines.train import TrainConfig

    code, out = vap_without([], "train", "--help")
    assert code == 0 and "PydanticUndefined" not in out
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^  --(\w+)\s+(.*)$", out, re.M)}
    assert set(rows) == set(TrainConfig.model_fields)
    for key, text in rows.items():
        assert re.match(r"\S.*\((default .*|required)\)$", text), (key, text)
    assert "(required)" in rows["data"]


def test_schema_event_markdown_lists_every_field():
    from vap_video.pipeline.events import load_schema

    code, out = vap_without([], "schema", "event", "--markdown")
    assert code == 0, out
    assert "| field | type | required in | meaning |" in out
    schema = load_schema()
    for key in schema["properties"]:
        assert re.search(rf"^\| `{key}` \| .+ \| .+ \| \S.* \|$", out, re.M), key
    assert "| `track_id` | string | `track.*`, `zone.*`, `line.*`, `object.*` |" in out
    assert "| `direction` | `in` \\| `out` | `line.cross` |" in out
    assert "config reference" not in out.lower() and "shutdown_timeout_s" not in out


def test_every_command_in_the_parser_has_exactly_one_handler():
    """`vap --help` lists built-in commands (run by `COMMANDS`) and delegated ones (which parse their
    own arguments); a command added to the parser without a handler would end in 'unknown command'."""
    import argparse

    from vap_video.pipeline.cli import COMMANDS, DELEGATED, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    listed = set(sub.choices)
    assert listed == set(COMMANDS) | set(DELEGATED)
    assert not set(COMMANDS) & set(DELEGATED)
    assert {"run", "demo", "validate", "schema", "bench"} <= set(COMMANDS)


def test_a_delegated_name_after_a_global_option_is_a_usage_error():
    code, out = vap_without([], "--log-level", "debug", "train")
    assert code == 2 and "unknown command train" in out
