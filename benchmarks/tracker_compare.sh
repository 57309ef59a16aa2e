#!/usr/bin/env bash
# Runs benchmarks/tracker_compare.py with the reference trackers installed into their own venv
# (cached per machine; never a dependency of vap itself). Arguments go to the script.
#   bash benchmarks/tracker_compare.sh --json benchmarks/tracker-compare.json
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VAP_BENCH_VENV:-$HOME/.cache/vap-bench/venv}
if ! "$VENV/bin/python" -c "import trackers, ultralytics, trackeval, pydantic, yaml" 2>/dev/null; then
  python3 -m venv "$VENV"
  # Ultralytics needs torchvision; these two are the pair that installs from this machine's disk
  # (an unpinned torch would pull several GB of CUDA packages).
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/pip" install -q ultralytics trackers trackeval==1.3.0 lap pydantic pyyaml
fi
export YOLO_OFFLINE=1 OPENBLAS_NUM_THREADS=1
exec "$VENV/bin/python" benchmarks/tracker_compare.py "$@"
