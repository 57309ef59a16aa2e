#!/usr/bin/env bash
# Installs everything the test suite needs (Debian and pip packages) and runs it.
# Safe to re-run: installs are skipped when already present. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# GStreamer's RTSP server (a real RTSP peer for the source tests) runs on the system Python's gi.
if ! /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null \
   || ! gst-inspect-1.0 x264enc >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends \
    gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-tools \
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly >/dev/null
fi

# Real servers for the sink and observability tests: MQTT broker, Redis, Prometheus (+ promtool).
if ! command -v mosquitto >/dev/null || ! command -v redis-server >/dev/null || ! command -v promtool >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends mosquitto redis-server prometheus >/dev/null
fi

# Debian's chromium for the console's browser test (driven by Playwright's Python package; no browser
# download: the test points Playwright at /usr/bin/chromium).
if ! command -v chromium >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# torch first, pinned: an unpinned torch would pull several GB of CUDA packages.
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[train,dev,sinks,cluster]"
# Helm's template engine (Apache-2.0; the Helm SDK compiled into a wheel) renders deploy/helm for its tests.
# --no-deps: it declares none that the tests use, and its pins would fight ours.
"$PY" -c "import helm_python" 2>/dev/null || "$PY" -m pip install -q --no-deps helm-python-sdk==0.2.2

# TrackEval (MIT), the reference HOTA implementation the tracker benchmark reports and tests check
# vap's evaluator against. --no-deps: its declared opencv-python would sit beside our headless build.
"$PY" -c "import trackeval" 2>/dev/null || "$PY" -m pip install -q --no-deps trackeval==1.3.0

# Ultralytics (AGPL-3.0) for the interop tests only, in its own venv so vap's environment never has
# it (vap's code must not import it). tests/test_interop_ultralytics.py runs it in a subprocess.
# CPU torch is enough; the pins match what the tests were verified with.
INTEROP_VENV=${VAP_INTEROP_VENV:-$HOME/.cache/vap-bench/venv}
if ! "$INTEROP_VENV/bin/python" -c "import ultralytics, onnx, onnxslim, onnxruntime" 2>/dev/null; then
  if "$PY" -m venv "$INTEROP_VENV" 2>/dev/null || { $SUDO apt-get install -y -qq python3-venv >/dev/null && "$PY" -m venv "$INTEROP_VENV"; }; then
    "$INTEROP_VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 \
      && "$INTEROP_VENV/bin/python" -m pip install -q "ultralytics==8.4.190" onnx==1.23.2 onnxslim==0.1.98 onnxruntime==1.32.0 \
      || echo "warning: could not install Ultralytics into $INTEROP_VENV; the interop tests will skip" >&2
  else
    echo "warning: could not create $INTEROP_VENV; the interop tests will skip" >&2
  fi
fi
export VAP_INTEROP_PYTHON="$INTEROP_VENV/bin/python"

# Lint and types first (seconds, and the cheapest failures to read): ruff over the whole tree,
# mypy over the package (settings in pyproject.toml; both come with the dev extra). VAP_SKIP_LINT=1 skips them for a quick rerun.
if [ "${VAP_SKIP_LINT:-0}" != 1 ]; then
  "$PY" -m ruff check .
  "$PY" -m mypy
fi

exec "$PY" -m pytest -q -rs -p no:cacheprovider "$@"
