"""Interop with the real Ultralytics exporter and predictor (a test tool only, never imported by vap).

Ultralytics (AGPL-3.0) lives in its own venv (`tests/run.sh` makes it: ~/.cache/vap-bench/venv);
`tests/interop/ultralytics_tool.py` runs there in a subprocess. It builds YOLO26n and YOLO11n from
Ultralytics' own model YAMLs with random weights (nothing downloaded: the tool refuses every network
connection and fails if one was tried) and exports each variant users bring, at two sizes:
end-to-end (dynamic, with the fully symbolic output dims, and static), one-to-many (static, dynamic,
fixed batch 4) and `nms=True`. Every export must load, pass `vap bench --engine-only`, and in a
`vap run` of a clip give the same detections on the first frame as Ultralytics' predictor on that
frame: same classes, boxes within 1 px, scores within 1e-3 (NMS-free rows and the NMS fallback alike).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tests" / "interop" / "ultralytics_tool.py"
SIZES = (320, 256)
VENV_PYTHON = Path(os.environ.get("VAP_INTEROP_PYTHON", Path.home() / ".cache/vap-bench/venv/bin/python"))


_CONFIG_DIR: list[Path] = []  # Ultralytics' settings folder for this session (not the user's home)


def _tool(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "HF_HUB_OFFLINE": "1"}
    if _CONFIG_DIR:
        env["YOLO_CONFIG_DIR"] = str(_CONFIG_DIR[0])
    env.pop("PYTHONPATH", None)  # the venv sees neither vap nor this interpreter's packages
    # cwd: Ultralytics writes each export beside the working directory before the tool moves it; never the repo
    return subprocess.run([str(VENV_PYTHON), str(TOOL), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL, cwd=_CONFIG_DIR[0].parent if _CONFIG_DIR else None)


@pytest.fixture(scope="module")
def interop(tmp_path_factory) -> dict[str, Any]:
    """Clips and frames per size, and every export (from the manifest) in one folder."""
    if not VENV_PYTHON.exists():
        pytest.skip(f"no Ultralytics venv at {VENV_PYTHON}: tests/run.sh creates it (pip install torch==2.14.1 "
                    f"torchvision==0.29.1 ultralytics onnx onnxslim onnxruntime)")
    probe = subprocess.run([str(VENV_PYTHON), "-c", "import ultralytics, onnx, onnxslim, onnxruntime"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"the venv at {VENV_PYTHON} cannot import ultralytics/onnx/onnxslim/onnxruntime: "
                    f"{probe.stderr.strip().splitlines()[-1:]}; tests/run.sh installs them")
    from vap_video.engines.synth import SceneVideo

    d = tmp_path_factory.mktemp("interop")
    _CONFIG_DIR[:] = [d / "ultralytics-config"]  # Ultralytics writes its settings here, not in ~
    frames: dict[int, Path] = {}
    clips: dict[int, Path] = {}
    for size in SIZES:  # a square frame of the model's size: the letterbox is the identity for both tools
        rgb, _ = SceneVideo(7, size, size, 10.0, 5, 0.0).frame(4)
        clip = d / f"clip{size}.mkv"
        with av.open(str(clip), "w") as out:
            s = out.add_stream("libx264", rate=10)
            s.width = s.height = size
            s.pix_fmt = "yuv420p"
            s.codec_context.options = {"preset": "ultrafast", "crf": "18"}
            for i in range(3):
                f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                f.pts, f.time_base = i, Fraction(1, 10)
                for p in s.encode(f):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
        with av.open(str(clip)) as c:  # the frame exactly as vap's decoder will see it
            decoded = next(c.decode(video=0)).to_ndarray(format="rgb24")
        frames[size] = d / f"frame{size}.png"
        cv2.imwrite(str(frames[size]), cv2.cvtColor(decoded, cv2.COLOR_RGB2BGR))
        clips[size] = clip
    exports = d / "exports"
    done = _tool("export", str(exports), str(frames[SIZES[0]]), *map(str, SIZES))
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    manifest = json.loads((exports / "manifest.json").read_text())
    assert len(manifest) == 6 * len(SIZES)
    return {"dir": d, "exports": exports, "manifest": manifest, "frames": frames, "clips": clips}


VARIANTS = [(arch, variant, size) for size in SIZES for arch, variant in [
    ("yolo26n", "e2e-dynamic"), ("yolo26n", "e2e-static"), ("yolo26n", "o2m-static"),
    ("yolo11n", "o2m-dynamic"), ("yolo11n", "o2m-batch4"), ("yolo11n", "nms-static")]]
LAYOUT = {"e2e": "end2end", "nms": "end2end", "o2m": "one-to-many+nms"}


def _threshold(model: Path, frame: Path) -> float:
    """A score threshold in the widest gap among the top 10..40 scores of vap's rows on the frame:
    a few dozen detections, and no score within reach of float noise of the threshold."""
    from vap_video.engines.backends import load_backend
    from vap_video.pipeline.preprocess import BatchPreprocessor

    be = load_backend(model, nms_conf=0.01)
    rgb = cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)
    x, _ = BatchPreprocessor(be.info.input_hw, be.info.stride, rect=be.info.dynamic_hw)([rgb])
    scores = np.sort(be.infer(x)[0][:, 4])[::-1]
    be.close()
    top = scores[10:41]
    gaps = top[:-1] - top[1:]
    i = int(np.argmax(gaps))
    assert gaps[i] > 1e-4, f"no clear gap in the scores {top}"
    return float((top[i] + top[i + 1]) / 2)


def _vap_rows(model: Path, clip: Path, conf: float) -> np.ndarray:
    """Detections of the clip's first frame in a real `vap run` (source-first settings, result hook)."""
    from vap_video.pipeline.cli import run_pipeline
    from vap_video.pipeline.quickrun import source_settings

    settings = source_settings([str(clip)], model=model, conf=conf)
    settings.sinks = []
    got: dict[int, np.ndarray] = {}

    def hook(frame, dets, tracks, events) -> None:  # type: ignore[no-untyped-def]
        got.setdefault(frame.index, np.concatenate([dets.boxes, dets.scores[:, None],
                                                    dets.class_ids[:, None].astype(np.float32)], 1))

    assert run_pipeline(settings, quiet=True, prepare=lambda p: p.hooks.append(hook)) == 0
    return got[0]


@pytest.mark.parametrize("arch,variant,size", VARIANTS, ids=[f"{a}-{v}-{s}" for a, v, s in VARIANTS])
def test_ultralytics_export_runs_and_agrees_with_their_predictor(interop, arch, variant, size):
    from vap_video.engines.backends import load_backend

    model = interop["exports"] / f"{arch}-{variant}-{size}.onnx"
    be = load_backend(model)
    assert be.info.layout == LAYOUT[variant[:3]] and be.info.input_hw == (size, size)
    assert be.info.dynamic_batch == ("dynamic" in variant) and be.info.dynamic_hw == ("dynamic" in variant)
    assert be.info.max_batch == (None if "dynamic" in variant else 4 if "batch4" in variant else 1)
    assert len(be.info.names) == 80
    be.close()

    bench = subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", "bench", "--engine-only",
                            "--model", str(model),
                            "--quick", "--batches", "1,3", "--out", str(interop["dir"] / "bench")],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bench.returncode == 0 and "| onnxruntime-cpu | fp32 | 3 |" in bench.stdout, bench.stderr[-2000:]

    frame = interop["frames"][size]
    conf = _threshold(model, frame)
    ours = _vap_rows(model, interop["clips"][size], conf)
    done = _tool("predict", str(model), str(frame), str(size), repr(conf), "0.7", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.array(json.loads(done.stdout.strip().splitlines()[-1])["rows"], np.float32).reshape(-1, 6)
    # vap drops boxes that collapse after clipping to the frame (padding artefacts); so does this comparison
    theirs = theirs[((theirs[:, 2] - theirs[:, 0]) > 0.5) & ((theirs[:, 3] - theirs[:, 1]) > 0.5)]
    assert 3 <= len(ours) <= 300
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    key = lambda r: (-round(float(r[4]), 3), int(r[5]), *np.round(r[:4], 0))
    ours, theirs = np.array(sorted(ours, key=key)), np.array(sorted(theirs, key=key))
    np.testing.assert_array_equal(ours[:, 5], theirs[:, 5])
    np.testing.assert_allclose(ours[:, :4], theirs[:, :4], atol=1.0)
    np.testing.assert_allclose(ours[:, 4], theirs[:, 4], atol=1e-3)


def test_vap_never_imports_ultralytics():
    """Ultralytics is AGPL: a test tool here, never a dependency of vap's own code."""
    files = list((ROOT / "vap_video").rglob("*.py"))
    assert len(files) > 100, "the package was not found where this test looks"
    offenders = [str(p.relative_to(ROOT)) for p in files
                 if any(line.strip().startswith(("import ultralytics", "from ultralytics"))
                        for line in p.read_text().splitlines())]
    assert not offenders
