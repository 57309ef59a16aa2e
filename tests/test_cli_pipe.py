"""Commands that print, when the reader of their output goes away (`vap schema config | head`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vap_video.pipeline import cli

ROOT = Path(__file__).resolve().parent.parent


def _run_into_closed_pipe(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run `vap ARGS` with stdout a pipe whose reader has already gone: every write hits EPIPE,
    which is what `| head` does to the rest of a long output, made deterministic."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", *args], stdout=w, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              timeout=120)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [["schema", "config"], ["schema", "event"], ["schema", "--markdown"], ["validate"]],
                         ids=["schema-config", "schema-event", "schema-markdown", "validate"])
def test_reader_gone_ends_quietly_with_sigpipe_status(args: list[str], tmp_path: Path):
    if args == ["validate"]:  # a small output: it sits in the buffer and fails only at the final flush
        cfg = tmp_path / "vap.yaml"
        cfg.write_text('streams:\n  - {name: cam, url: "synthetic://?seed=1"}\n')
        args = ["validate", str(cfg)]
    proc = _run_into_closed_pipe(args)
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err == ""
    assert proc.returncode == cli.EXIT_PIPE == 141


def test_a_broken_pipe_that_is_not_our_output_still_raises(monkeypatch: pytest.MonkeyPatch):
    """Only the output's reader leaving is quiet; a broken pipe elsewhere is a real error."""
    def broken(argv: list[str] | None) -> int:
        raise BrokenPipeError(32, "Broken pipe (a child process, not stdout)")

    monkeypatch.setattr(cli, "_main", broken)
    with pytest.raises(BrokenPipeError):
        cli.main([])
