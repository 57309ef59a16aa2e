"""Config loading: unknown keys and bad values name their path; env interpolation; redaction; CLI exit codes."""

import pytest

from vap_video.pipeline.cli import main
from vap_video.pipeline.config import ConfigError, redact_url
from vap_video.pipeline.settings import load_settings, parse_settings


def _write(tmp_path, text):
    p = tmp_path / "vap.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_key_path_and_allowed_keys(tmp_path):
    p = _write(tmp_path, "streams:\n  - name: cam1\n    url: rtsp://h/x\n    transprt: udp\n")
    with pytest.raises(ConfigError) as err:
        load_settings(p)
    msg = str(err.value)
    assert "streams[0]" in msg and "'transprt'" in msg and "transport" in msg  # suggests the allowed keys


def test_bad_values_name_their_path(tmp_path):
    p = _write(tmp_path, "batch:\n  max_batch: 0\nstreams:\n  - {name: 'bad name', url: 'x.mp4'}\n")
    msg = str(pytest.raises(ConfigError, load_settings, p).value)
    assert "batch.max_batch" in msg and "streams[0].name" in msg


def test_malformed_yaml_reports_line(tmp_path):
    p = _write(tmp_path, "streams:\n  - name: a\n    url: [unclosed\n")
    msg = str(pytest.raises(ConfigError, load_settings, p).value)
    assert "not valid YAML" in msg and "line" in msg


def test_unsupported_source_and_duplicate_names():
    with pytest.raises(ConfigError, match="unsupported source"):
        parse_settings({"streams": [{"name": "a", "url": "ftp://h/x"}]})
    with pytest.raises(ConfigError, match="used twice"):
        parse_settings({"streams": [{"name": "a", "url": "a.mp4"}, {"name": "a", "url": "b.mp4"}]})


def test_env_interpolation_and_missing_variable(monkeypatch):
    monkeypatch.setenv("CAM_PASS", "s3cret")
    s = parse_settings({"streams": [{"name": "a", "url": "rtsp://admin:${CAM_PASS}@10.0.0.5/live"}]})
    assert s.streams[0].url == "rtsp://admin:s3cret@10.0.0.5/live"
    assert s.streams[0].is_live and s.streams[0].kind == "rtsp"
    with pytest.raises(ConfigError, match=r"streams\[0\].url.*\$\{NOPE\}"):
        parse_settings({"streams": [{"name": "a", "url": "rtsp://u:${NOPE}@h/x"}]})
    assert parse_settings({"streams": [{"name": "a", "url": "rtsp://u:${NOPE:-d}@h/x"}]}).streams[0].url.endswith("d@h/x")


def test_redaction():
    assert redact_url("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://***@10.0.0.5:554/live"
    assert redact_url("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"
    # passwords with URL delimiters, and URLs a parser rejects, are still redacted and never raise
    for url in ("rtsp://admin:pa/ss@cam/live", "rtsp://a:b?c@cam/x", "rtsp://a:b#c@cam/x",
                "rtsp://admin:s3cret@cam:99999/live"):
        assert "s3cret" not in redact_url(url) and "pa/ss" not in redact_url(url) and "***@" in redact_url(url)


def test_bad_port_is_a_config_error_without_the_password():
    with pytest.raises(ConfigError) as err:
        parse_settings({"streams": [{"name": "a", "url": "rtsp://admin:s3cret@cam:99999/live"}]})
    assert "streams[0].url" in str(err.value) and "port" in str(err.value) and "s3cret" not in str(err.value)


def test_cli_validate_prints_resolved_config_without_secrets(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAM_PASS", "s3cret")
    from tests.videos import write_video
    clip = write_video(tmp_path / "clip.mp4", frames=3)
    p = _write(tmp_path, "streams:\n  - name: cam1\n    url: rtsp://admin:${CAM_PASS}@10.0.0.5/live\n"
                         f"  - name: f\n    url: {clip}\n")
    assert main(["validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "***@10.0.0.5" in out
    assert "max_delay_ms" in out and "live: false" in out  # derived defaults are shown


def test_cli_exit_codes_for_config_and_model_errors(tmp_path, capsys):
    p = _write(tmp_path, "streams: 5\n")
    assert main(["validate", str(p)]) == 2
    assert "streams" in capsys.readouterr().err
    p = _write(tmp_path, f"model: {{path: {tmp_path / 'missing.onnx'}}}\nserver: {{port: 0}}\n")
    assert main(["run", str(p), "--quiet"]) == 3
    assert "does not exist" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2


def test_busy_port_and_unwritable_sink_are_config_errors(tmp_path, capsys):
    import socket

    import numpy as np

    from tests.onnx_models import constant_detector
    model = constant_detector(tmp_path / "m.onnx", np.array([[1, 1, 5, 5, 0.9, 0]], np.float32), ["a"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = _write(tmp_path, f"model: {{path: {model}}}\nserver: {{port: {port}}}\n"
                             f"sinks: [{{path: {tmp_path / 'e.jsonl'}}}]\n")
        assert main(["run", str(p), "--quiet", "--duration", "1"]) == 2
        assert "cannot listen" in capsys.readouterr().err
    (tmp_path / "ro").write_text("a file, not a folder")
    p = _write(tmp_path, f"model: {{path: {model}}}\nserver: {{port: 0}}\n"
                         f"sinks: [{{path: {tmp_path / 'ro' / 'e.jsonl'}}}]\n")
    assert main(["run", str(p), "--quiet", "--duration", "1"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_unknown_key_in_a_typed_sink_lists_that_sink_type_keys():
    from vap_video.pipeline.config import ConfigError
    from vap_video.pipeline.settings import parse_settings

    with pytest.raises(ConfigError) as err:
        parse_settings({"sinks": [{"type": "mqtt", "hots": "broker"}]})
    msg = str(err.value)
    assert "sinks[0].hots: unknown key 'hots'" in msg and "host" in msg and "topic_prefix" in msg
    assert "mqtt.hots" not in msg                  # the union tag is not a key the user wrote


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../up", "a b", "x" * 65, ""])
def test_stream_names_that_would_escape_a_folder_are_refused(name):
    """Stream names become folder names (snapshots), metric labels and topic segments."""
    with pytest.raises(ConfigError) as err:
        parse_settings({"streams": [{"name": name, "url": "synthetic://?seed=1"}]})
    msg = str(err.value)
    assert "streams[0].name" in msg and "not starting with '.'" in msg and "rename it" in msg


@pytest.mark.parametrize("name", ["cam1", "gate-1", "Lobby_East.2", "a", "x" * 64, "-x", "_"])
def test_ordinary_stream_names_are_accepted(name):
    assert parse_settings({"streams": [{"name": name, "url": "synthetic://?seed=1"}]}).streams[0].name == name
