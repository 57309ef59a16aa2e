"""Training progress: a live bar with losses, img/s and ETAs on a terminal; plain lines in logs."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vap_video.engines.train_progress import TrainProgress, format_duration

REPO = Path(__file__).resolve().parents[1]
LOSSES = {"o2o_box": 1.25, "o2o_cls": 0.5, "o2m_box": 2.0, "other": 9.0}


def _epoch(p: TrainProgress, epoch: int, iters: int = 4) -> None:
    p.start_epoch(epoch, iters)
    for i in range(iters):
        time.sleep(0.01)
        p.update(i, LOSSES, images=8 * (i + 1))
    p.end_epoch(f"epoch {epoch + 1}/{p.epochs} summary")


def test_live_bar_shows_losses_speed_and_etas():
    pytest.importorskip("rich", reason="the live bar is drawn with rich (the train extra)")
    out = io.StringIO()
    p = TrainProgress(epochs=3, out=out, live=True)
    _epoch(p, 0)
    text = out.getvalue()
    assert "━" in text  # (redrawn in place with terminal codes, unless TERM=dumb: then drawn once)
    assert "epoch 1/3" in text and "4/4" in text
    assert "o2o_box 1.250" in text and "o2o_cls 0.500" in text and "other" not in text
    assert "img/s" in text and "ETA 0:00" in text and "(run 0:" in text
    assert text.rstrip().endswith("epoch 1/3 summary")


def test_without_a_terminal_only_summary_lines_and_log_every():
    out = io.StringIO()
    p = TrainProgress(epochs=2, out=out, live=None, log_every=2)  # StringIO is not a TTY
    assert not p.live
    _epoch(p, 0)
    _epoch(p, 1)
    lines = out.getvalue().splitlines()
    assert "\x1b[" not in out.getvalue()
    assert [ln.split(" img/s")[0].split(" | ")[0] for ln in lines if ln.startswith("  ")] == \
        ["  epoch 1 iter 2/4 o2o_box 1.250 o2o_cls 0.500 o2m_box 2.000"] * 1 + \
        ["  epoch 1 iter 4/4 o2o_box 1.250 o2o_cls 0.500 o2m_box 2.000"] + \
        ["  epoch 2 iter 2/4 o2o_box 1.250 o2o_cls 0.500 o2m_box 2.000",
         "  epoch 2 iter 4/4 o2o_box 1.250 o2o_cls 0.500 o2m_box 2.000"]
    assert [ln for ln in lines if not ln.startswith("  ")] == ["epoch 1/2 summary", "epoch 2/2 summary"]
    quiet = io.StringIO()
    _epoch(TrainProgress(epochs=1, out=quiet, live=False), 0)
    assert quiet.getvalue() == "epoch 1/1 summary\n"


def test_run_eta_uses_finished_epochs():
    p = TrainProgress(epochs=5, out=io.StringIO(), live=False)
    p._epoch_times = [10.0, 12.0]  # two epochs done, 11 s each on average
    p._epoch = 2
    assert p.run_eta(4.0) == pytest.approx(4.0 + 2 * 11.0)  # this epoch's rest, then epochs 4 and 5
    assert format_duration(59.6) == "1:00" and format_duration(3725) == "1:02:05" and format_duration(-3) == "0:00"


@pytest.mark.slow
def test_real_run_on_a_terminal_draws_the_bar(tmp_path):
    """`python -m vap_video.engines.train` with its stdout on a pseudo-terminal draws the bar; the same run
    piped (a log) prints one line per epoch and no terminal codes."""
    pytest.importorskip("rich", reason="the live bar is drawn with rich (the train extra)")
    from vap_video.engines.synth import write_yolo_dataset

    data = write_yolo_dataset(tmp_path / "data", n_train=8, n_val=2, imgsz=64, seed=3)
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump(dict(model="n", width=0.125, data=str(data), imgsz=64, batch=4, workers=0,
                                       epochs=2, close_mosaic=1, device="cpu", threads=1, project=str(tmp_path),
                                       name="t", warmup_epochs=0.5, plots=False, max_det=50, exist_ok=True)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "COLUMNS": "200", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    cmd = [sys.executable, "-m", "vap_video.engines.train", str(rec)]
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    tty_out = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in tty_out and "━" in tty_out and "img/s" in tty_out and "ETA" in tty_out and "o2o_box" in tty_out
    assert "epoch 2/2" in tty_out
    piped = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
                           stdin=subprocess.DEVNULL)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert "\x1b[" not in piped.stdout and "━" not in piped.stdout
    assert [ln.split(" lr ")[0] for ln in piped.stdout.splitlines() if ln.startswith("epoch ")] == ["epoch 1/2",
                                                                                                     "epoch 2/2"]
