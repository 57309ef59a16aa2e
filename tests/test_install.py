"""A regular (non-editable) install works on its own: the wheel carries the shipped model, the
console's assets, the schemas and the example configs, and the installed `vap demo` runs from any
folder. The wheel is built by this interpreter's setuptools and installed into a fresh venv that
sees this environment's dependencies but not the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _tracked_copy(dest: Path) -> Path:
    """The committed-or-added files of the checkout, so the build sees neither a stale build/ folder
    (setuptools never deletes what it copied there before) nor local runs, and leaves none behind."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files are the project's")
    src = _tracked_copy(tmp_path_factory.mktemp("src"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300,
                          env=_clean_env(), stdin=subprocess.DEVNULL)
    if proc.returncode != 0 and "bdist_wheel" in proc.stderr:
        pytest.skip("this interpreter's setuptools cannot build wheels without build isolation")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (found,) = out.glob("*.whl")
    return found


def test_wheel_carries_model_assets_and_configs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("vap_video/engines/models/vap-synth-n.onnx", "vap_video/engines/models/vap-synth-n.pt",
                     "vap_video/engines/models/vap-synth-n.json", "vap_video/pipeline/static/console.html",
                     "vap_video/pipeline/schemas/event.schema.json", "vap_video/pipeline/sinks/registry.py",
                     "vap_video/pipeline/tools/demo.py"):
        assert required in names, required
    assert any(n.endswith("share/vap/configs/demo.yaml") for n in names)
    assert not any(n.startswith("tests/") for n in names)


def test_installed_demo_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = _clean_env()
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300,
                   env=env, stdin=subprocess.DEVNULL, capture_output=True)
    show = ("import vap_video.pipeline, vap_video.engines; print(vap_video.pipeline.__file__); "
            "print(vap_video.engines.__file__)")
    where = subprocess.run([str(py), "-c", show], capture_output=True, text=True, check=True, cwd=tmp_path,
                           env=env).stdout.split()
    assert all(Path(p).is_relative_to(env_dir) for p in where), where  # the installed copy, not the checkout
    out = tmp_path / "demo"
    proc = subprocess.run([str(env_dir / "bin" / "vap"), "demo", "--duration", "3", "--port", "0", "--quiet",
                           "--out", str(out)], capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "events.jsonl").stat().st_size > 0
    processed = {name: s["processed"] for name, s in summary["streams"].items()}
    assert processed and all(n > 0 for n in processed.values()), processed
