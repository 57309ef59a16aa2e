"""Small, deterministic test videos written with PyAV.

Tests of sources, the supervisor and the end-to-end pipeline need real encoded files (several
containers, damaged copies, a mid-stream resolution change) rather than mocks, because the
behaviour under test lives in FFmpeg's demuxers and decoders. Everything here is tiny (a few dozen
frames at 160x120 by default) so a test writes its inputs in milliseconds.
"""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Codec per container that every FFmpeg build used here can write and read back.
DEFAULT_CODEC = {
    ".mp4": "libx264", ".mkv": "libx264", ".ts": "libx264", ".mov": "libx264", ".flv": "libx264",
    ".avi": "mpeg4", ".webm": "libvpx", ".mpg": "mpeg2video", ".mpeg": "mpeg2video",
}


def moving_squares(index: int, width: int, height: int) -> np.ndarray:
    """RGB frame `index` of a scene with two squares moving in opposite directions.

    The content changes every frame (so encoders cannot collapse frames) and is a pure function of
    `index`, so a test can regenerate what a decoded frame should roughly look like.
    """
    img = np.full((height, width, 3), 40, dtype=np.uint8)
    side = max(4, min(width, height) // 5)
    span_x = max(1, width - side)
    span_y = max(1, height - side)
    x1 = (index * 3) % span_x
    y1 = (index * 2) % span_y
    img[y1:y1 + side, x1:x1 + side] = (230, 40, 40)
    x2 = span_x - 1 - (index * 2) % span_x
    y2 = span_y - 1 - (index * 3) % span_y
    img[y2:y2 + side, x2:x2 + side] = (40, 200, 60)
    return img


def write_video(path: str | Path, *, width: int = 160, height: int = 120, fps: int = 25, frames: int = 50,
                codec: str | None = None, container_format: str | None = None, gop: int = 10,
                start_index: int = 0, options: dict[str, str] | None = None,
                container_options: dict[str, str] | None = None) -> Path:
    """Encode `frames` moving-squares frames into `path` and return it.

    The container comes from the suffix (or `container_format`), the codec from DEFAULT_CODEC
    unless given. A short GOP keeps damaged copies decodable again soon after the damage.
    `container_options` go to the muxer (e.g. {"movflags": "+faststart"} for an MP4 whose index
    sits before the data, so a truncated copy still opens).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    codec = codec or DEFAULT_CODEC.get(suffix, "libx264")
    with av.open(str(path), mode="w", format=container_format, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        opts = {"preset": "ultrafast", "bframes": "0"} if codec == "libx264" else {}
        opts.update(options or {})
        stream.codec_context.options = opts
        if codec != "libx264":
            stream.codec_context.time_base = Fraction(1, fps)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(moving_squares(start_index + i, width, height), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def truncated_copy(src: str | Path, dst: str | Path, keep: float = 0.6) -> Path:
    """Copy the first `keep` fraction of `src`'s bytes to `dst` (a download cut short)."""
    data = Path(src).read_bytes()
    cut = max(1, int(len(data) * keep))
    Path(dst).write_bytes(data[:cut])
    return Path(dst)


def corrupted_copy(src: str | Path, dst: str | Path, at: float = 0.5, nbytes: int = 4096, seed: int = 0) -> Path:
    """Copy `src` to `dst` with `nbytes` random bytes overwritten around the `at` fraction of the file.

    The file keeps its length and header, so it opens; the demuxer and decoder meet garbage in the
    middle (a disk or network error).
    """
    data = bytearray(Path(src).read_bytes())
    start = int(len(data) * at)
    end = min(len(data), start + nbytes)
    rng = random.Random(seed)
    data[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def resolution_change_ts(dst: str | Path, sizes: tuple[tuple[int, int], ...] = ((160, 120), (240, 176)),
                         frames_each: int = 25, fps: int = 25) -> Path:
    """An MPEG-TS file whose picture size changes mid-stream.

    Written as one TS segment per size and concatenated byte-wise — exactly what a camera does
    when its resolution is changed while streaming, or what `cat a.ts b.ts` produces.
    """
    dst = Path(dst)
    parts = []
    for n, (w, h) in enumerate(sizes):
        part = dst.with_name(f"{dst.stem}.part{n}.ts")
        write_video(part, width=w, height=h, fps=fps, frames=frames_each, start_index=n * frames_each)
        parts.append(part)
    dst.write_bytes(b"".join(p.read_bytes() for p in parts))
    for p in parts:
        p.unlink()
    return dst


def count_frames(path: str | Path) -> int:
    """Frames a clean decode of `path` yields (the reference count for a test)."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))
