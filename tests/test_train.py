"""Training loop, recipes/CLI errors, exact resume, `vap val` on both heads, DDP on CPU (gloo)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vap_video.engines.train import ConfigFileError, TrainConfig, cli, load_config, parse_overrides, train, val_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory) -> Path:
    from vap_video.engines.synth import write_yolo_dataset

    return write_yolo_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=4, imgsz=64, seed=3)


def tiny_cfg(data: Path, project: Path, **kw) -> TrainConfig:
    base = dict(model="n", width=0.125, data=str(data), imgsz=64, batch=4, workers=0, epochs=2, close_mosaic=1,
                device="cpu", threads=1, project=str(project), name="t", warmup_epochs=0.5, plots=True, max_det=50)
    base.update(kw)
    return TrainConfig(**base)


def test_unknown_recipe_key_is_named(tmp_path):
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"data": "d.yaml", "epohcs": 3}))
    with pytest.raises(ConfigFileError, match="unknown key 'epohcs'"):
        load_config(rec, {})
    with pytest.raises(ConfigFileError, match="lr0"):
        load_config(None, {"data": "d", "lr0": -1})
    with pytest.raises(ConfigFileError, match="not found"):
        load_config(tmp_path / "missing.yaml", {})


def test_overrides_are_typed():
    ov = parse_overrides(["--epochs", "5", "--device=cpu", "--no-val", "--lr0", "1e-3", "--amp"])
    assert {k: ov[k] for k in ("epochs", "device", "val", "amp")} == {"epochs": 5, "device": "cpu", "val": False,
                                                                      "amp": True}
    cfg = load_config(None, {**ov, "data": "d.yaml"})
    assert cfg.lr0 == pytest.approx(1e-3) and cfg.epochs == 5 and cfg.val is False
    with pytest.raises(ConfigFileError, match="unexpected argument"):
        parse_overrides(["epochs"])


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    assert cli([str(tmp_path / "nope.yaml")]) == 2
    assert "training recipe not found" in capsys.readouterr().err
    rec = tmp_path / "r.yaml"
    rec.write_text("data: missing/data.yaml\n")
    assert cli([str(rec), "--epochs", "1"]) == 2
    assert "missing/data.yaml not found" in capsys.readouterr().err
    assert cli(["--resume", str(tmp_path / "norun")]) == 2
    assert val_cli([str(tmp_path / "x.pt")]) == 3  # a model problem (vap's exit code 3)
    assert "x.pt does not exist" in capsys.readouterr().err


def _ema(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=False)["ema"]


@pytest.mark.slow
def test_train_writes_artifacts_and_resume_is_exact(data_yaml, tmp_path, capsys):
    seen: list[tuple[int, set[str], int]] = []

    def on_epoch(epoch, row, run):  # what is on disk when each epoch ends
        rows = list(csv.DictReader(open(run / "results.csv")))
        seen.append((epoch, {f for f in ("last.pt", "results.png", "pr_curve.png") if (run / f).is_file()}, len(rows)))

    full = train(tiny_cfg(data_yaml, tmp_path, name="full"), on_epoch=on_epoch)
    for f in ("last.pt", "best.pt", "results.csv", "args.yaml", "results.png", "pr_curve.png"):
        assert (full / f).is_file(), f
    # results.csv and the plots are refreshed every epoch, not only at the end
    files = {"last.pt", "results.png", "pr_curve.png"}
    assert seen == [(0, files, 1), (1, files, 2)]
    rows = list(csv.DictReader(open(full / "results.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"map50", "map50_95", "data_wait_frac", "img_per_s", "o2o_cls", "o2m_cls", "mosaic"} <= set(rows[0])
    assert [r["mosaic"] for r in rows] == ["1", "0"]  # close_mosaic=1: the last epoch without
    assert 0 <= float(rows[0]["data_wait_frac"]) <= 1
    out = capsys.readouterr().out
    assert "train: 8 images, 8 usable" in out and "epoch 2/2" in out
    assert "\x1b[" not in out, "no terminal: no live bar, plain lines only"
    assert sum(line.startswith("epoch ") for line in out.splitlines()) == 2  # one summary line per epoch

    # interrupted after epoch 1 of 2, then resumed
    part = train(tiny_cfg(data_yaml, tmp_path, name="part", stop_after=1))
    ck = torch.load(part / "last.pt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 0 and ck["schedule"] == {"epochs": 2}
    assert cli(["--resume", str(part), "--lr0", "0.5"]) == 2, "changing the recipe on resume is refused"
    assert "cannot change lr0" in capsys.readouterr().err
    # resumed with a longer run: epoch 2 must still be the last epoch of the original 2-epoch schedule
    assert cli(["--resume", str(part), "--epochs", "3", "--stop_after", "1"]) == 0
    a, b = _ema(full), _ema(part)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run must equal the uninterrupted one"
    resumed = list(csv.DictReader(open(part / "results.csv")))
    assert [(r["lr"], r["mosaic"]) for r in resumed] == [(r["lr"], r["mosaic"]) for r in rows]
    # past the schedule's end: final learning rate, mosaic stays off
    assert cli(["--resume", str(part), "--epochs", "3"]) == 0
    last = list(csv.DictReader(open(part / "results.csv")))[-1]
    assert last["epoch"] == "3" and last["mosaic"] == "0"
    cfg = tiny_cfg(data_yaml, tmp_path)
    assert float(last["lr"]) == pytest.approx(cfg.lr0 * cfg.lrf, rel=1e-4)
    assert "past its 2-epoch schedule" in capsys.readouterr().out
    # the old behaviour, asked for explicitly: the cosine stretched to 3 epochs, mosaic back on for epoch 2
    stretch = train(tiny_cfg(data_yaml, tmp_path, name="stretch", stop_after=1))
    assert cli(["--resume", str(stretch), "--epochs", "3", "--stretch-schedule", "--stop_after", "1"]) == 0
    rows3 = list(csv.DictReader(open(stretch / "results.csv")))
    assert rows3[1]["mosaic"] == "1" and float(rows3[1]["lr"]) > float(rows[1]["lr"])
    assert torch.load(stretch / "last.pt", map_location="cpu", weights_only=False)["schedule"] == {"epochs": 3}
    assert cli([str(tmp_path / "r.yaml"), "--stretch-schedule"]) == 2
    assert "only applies with --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_val_reports_both_heads(data_yaml, tmp_path, capsys):
    run = train(tiny_cfg(data_yaml, tmp_path, name="v", epochs=1, plots=False))
    capsys.readouterr()
    js = tmp_path / "val.json"
    assert val_cli([str(run / "best.pt"), "--device", "cpu", "--batch", "2", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "one-to-one head (NMS-free, top-K)" in out and "one-to-many head + class-aware NMS" in out
    assert "ms/image" in out
    import json

    res = json.loads(js.read_text())
    assert set(res["heads"]) == {"o2o", "o2m"}
    for h in res["heads"].values():
        assert 0 <= h["map50_95"] <= h["map50"] <= 1
        assert set(h["per_class_ap"]) == {"person", "car", "bicycle", "dog"}
    assert val_cli([str(run / "best.pt"), "--bogus", "1"]) == 2


@pytest.mark.slow
def test_ddp_two_processes_gloo(data_yaml, tmp_path):
    """torchrun, 2 CPU processes, gloo: one epoch finishes and rank 0 writes the checkpoint."""
    rec = tmp_path / "ddp.yaml"
    cfg = tiny_cfg(data_yaml, tmp_path, name="ddp", epochs=1, plots=False, val=False)
    rec.write_text(yaml.safe_dump(cfg.model_dump()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vap_video.engines.train", str(rec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "world 2" in proc.stdout
    ck = torch.load(tmp_path / "ddp" / "last.pt", map_location="cpu", weights_only=False)
    # total batch 4 over 2 ranks = 2 per rank; 8 images / 2 ranks = 4 each -> 2 iterations
    assert ck["epoch"] == 0 and ck["ema_updates"] == 2


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("train-*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    cfg = load_config(recipe, {})
    assert cfg.model in "nsmlx" and cfg.imgsz % 32 == 0
