"""Secrets in URL query strings (`?user=admin&password=...`) never appear anywhere: logs, /streams,
events, spool files, `vap validate` (userinfo passwords were already redacted; queries were not)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from vap_video.pipeline.config import redact_url
from tests.onnx_models import constant_detector

ROOT = Path(__file__).resolve().parent.parent
SECRETS = ("Hunter2Secret", "Tok3nSecret", "Sig4Secret", "K3ySecret", "Us3rPass")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redact_url_masks_secret_query_values_only():
    assert redact_url("rtsp://cam/live?user=admin&password=Hunter2Secret") == "rtsp://cam/live?user=admin&password=***"
    assert redact_url("http://h/a.m3u8?token=Tok3nSecret&seg=1") == "http://h/a.m3u8?token=***&seg=1"
    for name in ("pass", "pwd", "passwd", "secret", "auth", "signature", "sig", "key", "api_key", "apikey",
                 "access_token", "X-Amz-Signature", "PASSWORD", "pass%77ord"):
        out = redact_url(f"rtsp://cam/x?{name}=K3ySecret&a=1")
        assert "K3ySecret" not in out and out.endswith(f"{name}=***&a=1"), out
    # both at once, a fragment and delimiters inside the secret are still hidden
    out = redact_url("rtsp://u:Us3rPass@cam/x?pwd=Hunter2Secret#frag")
    assert "Us3rPass" not in out and "Hunter2Secret" not in out and "frag" not in out
    # harmless parameters stay readable (synthetic scenes, keyframe, user names)
    assert redact_url("synthetic://?seed=1&fps=25") == "synthetic://?seed=1&fps=25"
    assert redact_url("http://h/x?keyframe=1&user=admin") == "http://h/x?keyframe=1&user=admin"


def test_query_secrets_never_reach_logs_streams_events_spool_or_validate(tmp_path):
    model = constant_detector(tmp_path / "m.onnx", np.array([[10, 10, 30, 40, 0.9, 0]], np.float32), ["person"])
    port = _free_port()
    cfg = tmp_path / "vap.yaml"
    cfg.write_text(f"""
streams:
  - {{name: cam, url: "rtsp://127.0.0.1:{_free_port()}/live?user=admin&password=Hunter2Secret&token=Tok3nSecret",
     open_timeout_s: 1, backoff_initial_s: 0.2, backoff_max_s: 0.5}}
  - {{name: hls, url: "http://127.0.0.1:{_free_port()}/a.m3u8?sig=Sig4Secret&api_key=K3ySecret",
     open_timeout_s: 1, backoff_initial_s: 0.2, backoff_max_s: 0.5}}
  - {{name: both, url: "rtsp://admin:Us3rPass@127.0.0.1:{_free_port()}/x?pwd=Hunter2Secret", open_timeout_s: 1}}
model: {{path: "{model}"}}
sinks:
  - {{path: "{tmp_path / 'events.jsonl'}"}}
  - {{type: webhook, url: "http://127.0.0.1:{_free_port()}/hook", timeout_s: 0.5,
     spool: {{dir: "{tmp_path / 'spool'}"}}}}
server: {{port: {port}}}
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VAP_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "vap_video.pipeline.cli", "--log-level", "debug", "run", str(cfg),
                             "--quiet", "--duration", "8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, stdin=subprocess.DEVNULL)
    streams_body = ""
    try:
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            try:
                streams_body = urllib.request.urlopen(f"http://127.0.0.1:{port}/streams", timeout=2).read().decode()
                rows = json.loads(streams_body)
                if len(rows) == 3 and all(r["last_error"] for r in rows):
                    break
            except OSError:
                pass
            time.sleep(0.3)
        log, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = json.loads(streams_body)
    assert len(rows) == 3 and all(r["last_error"] for r in rows), streams_body
    assert "password=***" in streams_body and "sig=***" in streams_body          # redacted, not dropped
    events = (tmp_path / "events.jsonl").read_text()
    assert "stream.down" in events
    spool = b"".join(p.read_bytes() for p in (tmp_path / "spool").rglob("*") if p.is_file())
    assert b"stream.down" in spool                                               # the webhook spooled them
    validate = subprocess.run([sys.executable, "-m", "vap_video.pipeline.cli", "validate", str(cfg)],
                              capture_output=True,
                              text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert validate.returncode == 0 and "password=***" in validate.stdout
    for where, text in (("log", log), ("/streams", streams_body), ("events", events),
                        ("spool", spool.decode(errors="replace")), ("validate", validate.stdout + validate.stderr)):
        for secret in SECRETS:
            assert secret not in text, f"{secret} in {where}"
