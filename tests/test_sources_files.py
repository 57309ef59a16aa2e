"""Sources on real encoded files: containers, damage, resolution change, bad input, HTTP."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vap_video.pipeline.config import StreamConfig
from vap_video.pipeline.sources import SourceError, open_source
from tests.videos import corrupted_copy, count_frames, moving_squares, resolution_change_ts, truncated_copy, write_video

W, H, N = 160, 120, 30


def decode_all(cfg: StreamConfig, limit: int | None = None) -> tuple[list, object]:
    src = open_source(cfg)
    src.open()
    out = []
    try:
        for f in src.frames():
            out.append(f)
            if limit is not None and len(out) >= limit:
                break
    finally:
        src.close()
    return out, src


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts", ".avi", ".webm", ".mov", ".flv"])
def test_containers_decode_every_frame_with_pts(tmp_path: Path, suffix: str) -> None:
    path = write_video(tmp_path / f"clip{suffix}", width=W, height=H, frames=N, fps=25)
    frames, src = decode_all(StreamConfig(name="cam", url=str(path)))
    assert len(frames) == N
    assert [f.index for f in frames] == list(range(N))
    assert all(f.stream == "cam" for f in frames)
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    pts = [f.pts for f in frames]
    assert all(p is not None for p in pts)
    steps = np.diff(np.array(pts, dtype=float))
    assert np.allclose(steps, 1 / 25, atol=2e-3), steps
    assert src.decode_errors == 0
    # RGB order and content: the red square of frame 5 is where the generator drew it.
    ref = moving_squares(5, W, H).astype(int)
    got = frames[5].image.astype(int)
    red = (ref[..., 0] > 200) & (ref[..., 1] < 80)
    assert got[red][:, 0].mean() > 170 and got[red][:, 1].mean() < 100
    assert np.abs(got - ref).mean() < 12


def test_file_url_and_capture_ts(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mkv", frames=10)
    before = time.time()
    frames, _ = decode_all(StreamConfig(name="cam", url=path.as_uri()))
    assert len(frames) == 10
    assert all(before <= f.capture_ts <= time.time() for f in frames)


@pytest.mark.parametrize("suffix,opts", [(".mkv", None), (".mp4", {"movflags": "+faststart"}), (".avi", None)])
def test_truncated_file_gives_frames_before_the_damage_and_counts_it(tmp_path: Path, suffix: str, opts) -> None:
    full = write_video(tmp_path / f"full{suffix}", frames=50, container_options=opts)
    cut = truncated_copy(full, tmp_path / f"cut{suffix}", keep=0.6)
    frames, src = decode_all(StreamConfig(name="cam", url=str(cut)))
    assert 10 <= len(frames) < 50
    assert [f.index for f in frames] == list(range(len(frames)))
    assert src.decode_errors >= 1, "truncation must be counted as damage"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_corrupt_middle_is_skipped_and_counted(tmp_path: Path, suffix: str) -> None:
    full = write_video(tmp_path / f"full{suffix}", frames=50)
    bad = corrupted_copy(full, tmp_path / f"bad{suffix}", at=0.5, nbytes=2000)
    frames, src = decode_all(StreamConfig(name="cam", url=str(bad)))
    assert src.decode_errors >= 1
    # frames before the damage all come out; decoding resumes after it
    assert len(frames) >= 20
    assert frames[-1].pts is not None and frames[-1].pts > 1.5


def test_resolution_change_mid_stream(tmp_path: Path) -> None:
    path = resolution_change_ts(tmp_path / "rc.ts", sizes=((160, 120), (240, 176)), frames_each=20)
    frames, src = decode_all(StreamConfig(name="cam", url=str(path)))
    shapes = [f.shape for f in frames]
    assert len(frames) == 40
    assert shapes[:20] == [(120, 160)] * 20
    assert shapes[20:] == [(176, 240)] * 20
    # Byte-concatenated TS breaks the continuity counter once, so the demuxer may flag the first
    # packet of the second segment; that one flag is all, and it costs no frame.
    assert src.decode_errors <= 1


def test_loop_restarts_the_file(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mkv", frames=10)
    frames, _ = decode_all(StreamConfig(name="cam", url=str(path), loop=True), limit=25)
    assert len(frames) == 25
    assert [f.index for f in frames] == list(range(25))
    assert frames[10].pts == pytest.approx(frames[0].pts)


def test_realtime_paces_at_file_fps(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.mkv", frames=11, fps=25)
    t0 = time.monotonic()
    frames, _ = decode_all(StreamConfig(name="cam", url=str(path), realtime=True))
    took = time.monotonic() - t0
    assert len(frames) == 11
    assert took >= 0.38  # 10 intervals of 40 ms
    t0 = time.monotonic()
    decode_all(StreamConfig(name="cam", url=str(path)))
    assert time.monotonic() - t0 < took  # without realtime it does not sleep


# ------------------------------------------------------------------------------ bad input


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    src = open_source(StreamConfig(name="cam", url=str(tmp_path / "nope.mp4")))
    with pytest.raises(SourceError) as ei:
        src.open()
    assert ei.value.kind == "not_found"
    assert "nope.mp4" in str(ei.value) and "no such file" in str(ei.value)


def test_not_a_video_is_unsupported(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("this is a shopping list, not a video\n" * 50)
    src = open_source(StreamConfig(name="cam", url=str(bogus)))
    with pytest.raises(SourceError) as ei:
        src.open()
    assert ei.value.kind == "unsupported"
    assert "notes.mp4" in str(ei.value) and "not a video" in str(ei.value)


def test_audio_only_file_is_unsupported(tmp_path: Path) -> None:
    import av

    path = tmp_path / "sound.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in stream.encode(frame):
            out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    src = open_source(StreamConfig(name="cam", url=str(path)))
    with pytest.raises(SourceError) as ei:
        src.open()
    assert ei.value.kind == "unsupported" and "no video stream" in str(ei.value)


def test_unknown_scheme_is_unsupported() -> None:
    with pytest.raises(SourceError) as ei:
        open_source(StreamConfig(name="cam", url="gopher://example.org/cam"))
    assert ei.value.kind == "unsupported" and "rtsp://" in str(ei.value)


def test_missing_v4l2_device_is_not_found() -> None:
    src = open_source(StreamConfig(name="cam", url="/dev/video97"))
    with pytest.raises(SourceError) as ei:
        src.open()
    assert ei.value.kind == "not_found" and "/dev/video97" in str(ei.value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_is_unreachable_and_redacted() -> None:
    port = free_port()
    src = open_source(StreamConfig(name="cam", url=f"rtsp://admin:hunter2@127.0.0.1:{port}/cam"))
    with pytest.raises(SourceError) as ei:
        src.open()
    msg = str(ei.value)
    assert ei.value.kind == "unreachable"
    assert "hunter2" not in msg and "admin" not in msg
    assert msg.startswith(f"rtsp://***@127.0.0.1:{port}/cam: unreachable: connection refused")


def test_unknown_host_is_unreachable() -> None:
    src = open_source(StreamConfig(name="cam", url="rtsp://no-such-camera.invalid/cam", open_timeout_s=3))
    with pytest.raises(SourceError) as ei:
        src.open()
    assert ei.value.kind == "unreachable" and "cannot resolve" in str(ei.value)


def test_open_timeout_on_a_silent_server() -> None:
    # A socket that accepts TCP (backlog) but never answers the RTSP handshake.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    try:
        src = open_source(StreamConfig(name="cam", url=f"rtsp://127.0.0.1:{port}/cam", open_timeout_s=1.0))
        t0 = time.monotonic()
        with pytest.raises(SourceError) as ei:
            src.open()
        assert time.monotonic() - t0 < 5
        assert ei.value.kind == "timeout" and "could not open" in str(ei.value)
    finally:
        srv.close()


# ------------------------------------------------------------------------------ HTTP


@pytest.fixture()
def http_dir(tmp_path: Path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


def test_http_file_non_live_decodes_all(http_dir) -> None:
    root, base = http_dir
    write_video(root / "clip.mkv", frames=20)
    frames, _ = decode_all(StreamConfig(name="cam", url=f"{base}/clip.mkv", live=False))
    assert len(frames) == 20


def test_http_live_end_is_an_eof_error(http_dir) -> None:
    root, base = http_dir
    write_video(root / "clip.mkv", frames=5)
    src = open_source(StreamConfig(name="cam", url=f"{base}/clip.mkv"))
    src.open()
    got = []
    with pytest.raises(SourceError) as ei:
        for f in src.frames():
            got.append(f)
    src.close()
    assert len(got) == 5 and ei.value.kind == "eof"


def test_hls_playlist(http_dir) -> None:
    import av

    root, base = http_dir
    clip = write_video(root / "clip.ts", frames=50)
    with av.open(str(clip)) as inp, av.open(str(root / "live.m3u8"), "w", format="hls",
                                            options={"hls_time": "1", "hls_list_size": "0"}) as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        for pkt in inp.demux(s_in):
            if pkt.dts is None:
                continue
            pkt.stream = s_out
            out.mux(pkt)
    assert count_frames(root / "live.m3u8") == 50
    frames, _ = decode_all(StreamConfig(name="cam", url=f"{base}/live.m3u8", live=False))
    assert len(frames) == 50


def test_http_404_is_not_found(http_dir) -> None:
    _, base = http_dir
    src = open_source(StreamConfig(name="cam", url=f"{base}/missing.m3u8"))
    with pytest.raises(SourceError) as ei:
        src.open()
    assert ei.value.kind == "not_found" and "404" in str(ei.value)


def test_damage_in_a_file_resumes_at_the_next_keyframe(tmp_path: Path) -> None:
    full = write_video(tmp_path / "full.mp4", frames=100, gop=25)
    bad = corrupted_copy(full, tmp_path / "bad.mp4", at=0.3, nbytes=3000)
    frames, src = decode_all(StreamConfig(name="cam", url=str(bad)))
    assert src.decode_errors >= 3
    assert len(frames) < 100
    assert frames[-1].pts == pytest.approx(3.96)  # decoding came back for the last GOP


def test_live_stream_with_undecodable_run_raises_decoder_error(http_dir, monkeypatch) -> None:
    """A live input whose packets keep failing (codec changed, broken encoder) is not limped
    along: after MAX_CONSECUTIVE_ERRORS the source gives up so the supervisor reconnects."""
    import vap_video.pipeline.sources as sources

    monkeypatch.setattr(sources, "MAX_CONSECUTIVE_ERRORS", 5)
    root, base = http_dir
    full = write_video(root / "full.mp4", frames=100, gop=100)  # one keyframe: everything after the damage fails
    corrupted_copy(full, root / "bad.mp4", at=0.3, nbytes=3000)
    src = open_source(StreamConfig(name="cam", url=f"{base}/bad.mp4"))
    src.open()
    got = []
    with pytest.raises(SourceError) as ei:
        for f in src.frames():
            got.append(f)
    src.close()
    assert ei.value.kind == "decoder" and "could not be decoded" in str(ei.value)
    assert 10 <= len(got) < 100 and src.decode_errors >= 5


def test_looping_a_file_without_frames_ends_instead_of_spinning(tmp_path: Path) -> None:
    # FFmpeg cannot write a video file with no frames, so keep a Matroska header and no cluster.
    full = write_video(tmp_path / "full.mkv", frames=10)
    empty = tmp_path / "empty.mkv"
    empty.write_bytes(full.read_bytes()[:1000])
    src = open_source(StreamConfig(name="cam", url=str(empty), loop=True))
    src.open()
    t0 = time.monotonic()
    assert list(src.frames()) == []
    assert time.monotonic() - t0 < 2
    assert src.last_decode_error == "no decodable frame in the file"
