"""Stream sources: one object per stream that opens it and yields decoded RGB frames.

Over 400 lines on purpose: most of it is `AVSource`, one class whose open, decode and truncation
steps share the container, the decoder and the error counters; the error classification is in
`vap_video.pipeline.source_errors` (re-exported here).

Every real input (RTSP cameras, HTTP/HLS, local files, V4L2 devices) goes through PyAV, so one
class covers them; only the URL handling and FFmpeg options differ per kind. A generated scene
(`synthetic://`) has its own small class. Sources do no supervision: they raise `SourceError`
with a `kind` and an operator-facing, credential-free message, and the supervisor
(`vap_video.pipeline.supervisor`) decides about state, backoff and reconnects.

Design points, and why:
- Opening happens in `open()`, not in the constructor, so the supervisor can create a source
  cheaply and do the (possibly slow) network I/O in the stream's own thread: one dead camera
  never delays another.
- `av.open(..., timeout=(open, read))` bounds every blocking FFmpeg call. PyAV has no way to
  interrupt a read from another thread, so `read_timeout_s` is also the upper bound on how long
  a stopped stream may keep its decoder; the supervisor's watchdog covers reads that ignore it.
- Corrupt packets are skipped and counted (`decode_errors`), not fatal: a camera that sends one
  broken GOP should not be reconnected. Only a long run of consecutive errors is.
- Frames are decoded straight to `rgb24` (the engine contract is RGB), and when the runtime
  hands over a `DecodePlan`, straight to the engine's letterbox size in the same swscale pass.
  A `FrameStride` (the `max_fps` cap) is applied before that conversion, so dropped frames cost
  only their decode; `keyframes_only` makes the decoder skip every other frame entirely.
- Threading: files (and inputs configured `live: false`) decode with FFmpeg's frame threading,
  which raises throughput but holds back a few frames; live inputs use slice threading only,
  which adds no delay (see benchmarks/pipeline.md for the measurements behind this).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from vap_video.pipeline.config import SYNTHETIC_DEFAULTS, SYNTHETIC_PARAMS, StreamConfig, parse_synthetic, redact_url
from vap_video.pipeline.decode_plan import DecodePlan, FrameStride, convert
from vap_video.pipeline.frames import Frame
from vap_video.pipeline.source_errors import SOURCE_ERROR_KINDS, SourceError, refine_network_error, classify_error

log = logging.getLogger(__name__)

# After this many consecutive undecodable packets a live stream counts as broken and is
# reconnected (a changed codec, a broken encoder). Files skip on to their next keyframe instead;
# for files the limit only applies to container data the demuxer cannot get past.
MAX_CONSECUTIVE_ERRORS = 50


class Source(ABC):
    """One stream: `open()`, iterate `frames()`, `close()` (idempotent).

    Subclasses keep `decode_errors` (damaged packets/frames skipped so far) and `blocked_since`
    (monotonic start of the blocking call now in progress, None otherwise) up to date: the
    supervisor reads both, the first for metrics, the second to detect a read that hangs.

    The supervisor may set `plan` (decode straight to the engine size) and, where
    `strides_early` is true, `stride` (the `max_fps` cap, applied before conversion) before
    calling `frames()`; a source without them yields full frames and leaves the cap to the caller.
    """

    strides_early = False

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.decode_errors = 0
        self.last_decode_error: str | None = None
        # Set when a finite input ended early (its header promised more, or the rest was
        # unreadable): the supervisor reports the file as truncated instead of "end of file".
        self.truncated: str | None = None
        self.blocked_since: float | None = None
        self.plan: DecodePlan | None = None
        self.stride: FrameStride | None = None
        self._interrupt = threading.Event()

    @property
    def redacted_url(self) -> str:
        return redact_url(self.cfg.url)

    @abstractmethod
    def open(self) -> None:
        """Connect/open the input; raises SourceError with a clear, redacted reason."""

    @abstractmethod
    def frames(self) -> Iterator[Frame]:
        """Decoded RGB frames; ends at the end of a finite input or raises SourceError."""

    @abstractmethod
    def close(self) -> None:
        """Release the decoder/container; idempotent."""

    def interrupt(self) -> None:
        """Ask `frames()` to end soon (between frames and during pacing sleeps); thread-safe."""
        self._interrupt.set()

    def _count_error(self, text: str) -> None:
        self.decode_errors += 1
        self.last_decode_error = text

    def _pace(self, start_wall: float, offset_s: float) -> None:
        """Sleep until `start_wall + offset_s` (realtime playback), waking early on interrupt."""
        delay = start_wall + offset_s - time.monotonic()
        if delay > 0:
            self._interrupt.wait(delay)


class AVSource(Source):
    """RTSP, HTTP(S)/HLS, local files and V4L2 devices, all through PyAV/FFmpeg."""

    strides_early = True

    def __init__(self, cfg: StreamConfig) -> None:
        super().__init__(cfg)
        self.kind = cfg.kind
        self._container: Any = None
        self._stream: Any = None
        self._decoded = 0
        self._last_pts: float | None = None
        self._pts_restarted = False
        self._consecutive_errors = 0  # undecodable packets / damaged container reads in a row
        self._target, self._format, self._options = self._resolve()

    @property
    def _live_semantics(self) -> bool:
        """True for inputs whose end or breakage means 'reconnect' (cameras, live HTTP/HLS);
        false for local files and inputs configured live=False, which end instead."""
        return self.kind != "file" and self.cfg.is_live

    @property
    def thread_type(self) -> str:
        """FFmpeg decoder threading: frame threading decodes several frames at once (throughput)
        but holds each back by about one frame per thread; right for files, wrong for a camera
        whose latency we bound, which gets slice threading (no delay)."""
        return "SLICE" if self._live_semantics else "AUTO"

    def _resolve(self) -> tuple[str, str | None, dict[str, str]]:
        """URL, FFmpeg input format and options for this kind of source."""
        url = self.cfg.url
        if self.kind == "rtsp":
            # TCP by default: UDP loses packets (smeared frames) on any busy network.
            return url, None, {"rtsp_transport": self.cfg.transport}
        if self.kind == "http":
            return url, None, {}
        if self.kind == "v4l2":
            path = url[len("v4l2://"):] if url.lower().startswith("v4l2://") else url
            return path, "v4l2", {}
        if self.kind == "file":
            path = unquote(urlsplit(url).path) if url.lower().startswith("file://") else url
            return path, None, {}
        raise SourceError("unsupported", f"{self.redacted_url}: not a PyAV source kind ({self.kind})")

    def open(self) -> None:
        """Open the container and pick the first video stream; SourceError on any failure."""
        import av

        if self.kind in ("file", "v4l2"):
            p = Path(self._target)
            if not p.exists():
                what = "device" if self.kind == "v4l2" else "file"
                raise SourceError("not_found", f"{self.redacted_url}: not found: no such {what}")
            if p.is_dir():
                raise SourceError("unsupported", f"{self.redacted_url}: is a directory, not a video file")
        self.close()
        self.blocked_since = time.monotonic()
        try:
            container = av.open(self._target, mode="r", format=self._format, options=self._options,
                                timeout=(self.cfg.open_timeout_s, self.cfg.read_timeout_s))
        except Exception as exc:  # every failure becomes a classified SourceError
            failure: BaseException = exc
            waited = time.monotonic() - (self.blocked_since or time.monotonic())
            if waited >= 0.95 * self.cfg.open_timeout_s and self.kind != "file":
                # FFmpeg reports an interrupted RTSP/HTTP handshake as "invalid data"; the clock
                # says what really happened.
                failure = TimeoutError()
            e = classify_error(failure, self.cfg.url, "open", self.cfg.open_timeout_s)
            if self.kind in ("rtsp", "http"):
                e = refine_network_error(e, self.cfg.url)
            raise e from None
        finally:
            self.blocked_since = None
        if not container.streams.video:
            container.close()
            raise SourceError("unsupported", f"{self.redacted_url}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = self.thread_type
        if self.cfg.keyframes_only:
            stream.codec_context.skip_frame = "NONKEY"  # the decoder drops every other frame unread
        self._container, self._stream = container, stream

    def close(self) -> None:
        """Release the demuxer and decoder; safe to call twice or before open()."""
        container, self._container, self._stream = self._container, None, None
        if container is not None:
            try:
                container.close()
            except Exception as exc:
                log.debug("stream %s: error while closing: %s", self.cfg.name, type(exc).__name__)

    def frames(self) -> Iterator[Frame]:
        """Decoded RGB frames until EOF (files, non-live inputs) or a SourceError (live streams)."""
        if self._container is None:
            self.open()
        count = 0
        while True:
            yield from self._decode_until_eof(count_start=count)
            if self._interrupt.is_set():
                return
            self._check_truncation()
            if self.cfg.loop and self._decoded == count and not self._live_semantics:
                self.last_decode_error = self.last_decode_error or "no decodable frame in the file"
                return  # looping a file without a single frame would spin forever
            if self.cfg.loop:
                self.open()  # reopening is the simplest exact way to restart demuxer and decoder
                count = self._decoded
                continue
            if not self._live_semantics:
                return
            raise SourceError("eof", f"{self.redacted_url}: stream ended (the server closed the connection)")

    def _decode_until_eof(self, count_start: int) -> Iterator[Frame]:
        """Frames from the open container until its end, an interrupt, or a SourceError.

        Damaged data is skipped and counted (`_decode_packet`, `_skip_damaged_data`); after a
        damaged stretch the demuxer is asked for packets again from where it is.
        """
        import av
        from av.video.reformatter import VideoReformatter

        undecodable = (av.error.InvalidDataError, av.error.UndefinedError)
        reformatter = VideoReformatter()  # keeps its swscale context from frame to frame (see convert)
        self._decoded = count_start
        self._last_pts = None
        self._pts_restarted = False
        self._consecutive_errors = 0
        stream = self._stream
        clock = _FileClock(float(stream.average_rate or stream.guessed_rate or 25)) \
            if self.cfg.realtime and self.kind == "file" else None
        while not self._interrupt.is_set():
            packets = self._container.demux(stream)
            try:
                for packet in self._read_packets(packets):
                    decoded = self._decode_packet(packet, undecodable)
                    for vf in decoded:
                        self._consecutive_errors = 0
                        frame = self._to_frame(vf, clock, reformatter)
                        if frame is None:
                            continue
                        yield frame
                        if self._interrupt.is_set():
                            return
                return
            except SourceError:
                raise
            except Exception as exc:
                if self._skip_damaged_data(exc):
                    return
            finally:
                packets.close()

    def _read_packets(self, packets: Iterator[Any]) -> Iterator[Any]:
        """The demuxer's packets, with `blocked_since` set while a read is in progress (the watchdog's clue)."""
        while True:
            self.blocked_since = time.monotonic()
            try:
                packet = next(packets)
            except StopIteration:
                return
            finally:
                self.blocked_since = None
            yield packet

    def _decode_packet(self, packet: Any, undecodable: tuple[type[BaseException], ...]) -> list[Any]:
        """The packet's pictures; none when it cannot be decoded (counted, and fatal for a live
        stream after MAX_CONSECUTIVE_ERRORS in a row)."""
        if packet.is_corrupt:
            self._count_error("corrupt packet")
        try:
            return packet.decode()
        except undecodable as exc:
            self._consecutive_errors += 1
            self._count_error(f"undecodable packet ({type(exc).__name__})")
            # A file goes on to its next keyframe (every packet read is progress, and reopening
            # would replay it); a live stream is reconnected, which also brings a fresh keyframe
            # and renegotiates a changed codec.
            if self._consecutive_errors >= MAX_CONSECUTIVE_ERRORS and self._live_semantics:
                raise SourceError("decoder", f"{self.redacted_url}: {self._consecutive_errors} packets in a row "
                                             f"could not be decoded (codec changed or stream broken)") from None
            return []

    def _to_frame(self, vf: Any, clock: _FileClock | None, reformatter: Any) -> Frame | None:
        """One decoded picture as a Frame (paced when realtime); None when the `max_fps` cap drops it."""
        pts = vf.time
        if clock is not None:
            self._pace(*clock.offset(pts, self._decoded))
        if pts is not None and self._last_pts is not None and pts < self._last_pts:
            self._pts_restarted = True  # concatenated segments: durations are meaningless
        self._last_pts = pts
        if self.stride is not None and not self.stride.keep(pts):
            return None  # decoded (later frames need it), never converted
        src_hw = (vf.height, vf.width)
        target = self.plan.target(self.cfg.name, *src_hw) if self.plan is not None else None
        frame = Frame(self.cfg.name, self._decoded, pts, time.time(), convert(vf, target, reformatter),
                      src_hw if target is not None else None)
        self._decoded += 1
        return frame

    def _skip_damaged_data(self, exc: Exception) -> bool:
        """After a read error: raise it as a SourceError unless it is damaged container data, which
        is counted and skipped. True when a file's rest is unreadable and decoding should end."""
        e = classify_error(exc, self.cfg.url, "read", self.cfg.read_timeout_s)
        if e.kind != "corrupt":
            raise e from None
        # Damaged container data: skip it and go on reading from where the demuxer is.
        self._consecutive_errors += 1
        self._count_error("corrupt container data")
        if self._consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
            if not self._live_semantics:
                self.last_decode_error = "the rest of the file is unreadable"
                self.truncated = self.last_decode_error
                return True
            raise e from None
        return False

    def _check_truncation(self) -> None:
        """Count a damage when a file ends well before the duration its header declares.

        Truncation is otherwise silent in several containers (Matroska just stops); a declared
        duration is only trusted when the file has a video stream alone, so a longer audio track
        can never look like damage.
        """
        container, stream = self._container, self._stream
        if container is None or self.kind != "file" or self._last_pts is None or self._pts_restarted:
            return
        declared: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        elif container.duration is not None and len(container.streams) == 1:
            declared = container.duration / 1_000_000
            start = (container.start_time or 0) / 1_000_000
        if declared is None or declared <= 0:
            return
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        missing = (start + declared) - (self._last_pts + 1.0 / rate)
        if missing > max(2.0 / rate, 0.1):
            self._count_error(f"file ends {missing:.2f}s before its declared duration (truncated?)")
            self.truncated = f"the file ends {missing:.2f}s before the {declared:.2f}s its header declares"


class _FileClock:
    """Realtime playback of a file: the wall-clock offset of each frame from the first one, by its
    timestamp (or its index at the stream's rate when it has none); restarts when timestamps jump."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.start_wall: float | None = None
        self.first_pts: float | None = None
        self.n0 = 0

    def offset(self, pts: float | None, decoded: int) -> tuple[float, float]:
        """(start_wall, offset_s) to pace frame number `decoded` at, for `Source._pace`."""
        if self.start_wall is None:
            self.start_wall, self.first_pts, self.n0 = time.monotonic(), pts, decoded
        offset = (pts - self.first_pts) if (pts is not None and self.first_pts is not None) \
            else (decoded - self.n0) / self.fps
        if not 0.0 <= offset <= 3600.0:  # timestamps jumped: restart the clock
            self.start_wall, self.first_pts, self.n0, offset = time.monotonic(), pts, decoded, 0.0
        return self.start_wall, offset


class SyntheticSource(Source):
    """A generated scene (`vap_video.engines.synth.SceneVideo`) for demos, tests and benchmarks.

    Always paced at its fps when live (a camera cannot deliver faster than real time) or when
    `realtime` is set; otherwise as fast as it can be rendered.
    """

    PARAMS = SYNTHETIC_PARAMS
    DEFAULTS = SYNTHETIC_DEFAULTS
    strides_early = True

    def __init__(self, cfg: StreamConfig) -> None:
        super().__init__(cfg)
        self.params = self._parse(cfg.url)
        self._scene: Any = None

    @classmethod
    def _parse(cls, url: str) -> dict[str, Any]:
        try:
            return parse_synthetic(url)
        except ValueError as exc:
            raise SourceError("unsupported", f"{url}: {exc}") from None

    def open(self) -> None:
        try:
            from vap_video.engines.synth import SceneVideo
        except ImportError as exc:
            raise SourceError("unsupported", f"{self.cfg.url}: synthetic scenes need vap_video.engines.synth "
                                             f"({exc})") from None
        p = self.params
        try:
            self._scene = SceneVideo(p["seed"], p["width"], p["height"], p["fps"], p["objects"], p["haze"])
        except ValueError as exc:
            raise SourceError("unsupported", f"{self.cfg.url}: {exc}") from None

    def close(self) -> None:
        self._scene = None

    def frames(self) -> Iterator[Frame]:
        if self._scene is None:
            self.open()
        p = self.params
        fps, total = float(p["fps"]), int(p["frames"])
        paced = self.cfg.is_live or self.cfg.realtime
        emitted = 0
        while not self._interrupt.is_set():
            start_wall = time.monotonic()
            i = 0
            while (total == 0 or i < total) and not self._interrupt.is_set():
                if paced:
                    self._pace(start_wall, i / fps)
                if self.stride is not None and not self.stride.keep(i / fps):
                    i += 1
                    continue  # a frame the max_fps cap drops is never rendered
                rgb, _gt = self._scene.frame(i)
                yield Frame(self.cfg.name, emitted, i / fps, time.time(), rgb)
                emitted += 1
                i += 1
            if not self.cfg.loop:
                return


def open_source(cfg: StreamConfig) -> Source:
    """The Source for `cfg` (chosen by the URL's kind). No I/O happens until `open()`.

    Raises SourceError('unsupported') for a URL no source understands.
    """
    try:
        kind = cfg.kind
    except ValueError as exc:
        raise SourceError("unsupported", str(exc)) from None
    if kind == "synthetic":
        return SyntheticSource(cfg)
    if kind in ("rtsp", "http", "file", "v4l2"):
        return AVSource(cfg)
    raise SourceError("unsupported", f"{redact_url(cfg.url)}: no source for kind {kind!r}")


__all__ = ["SOURCE_ERROR_KINDS", "AVSource", "Source", "SourceError", "SyntheticSource", "classify_error",
           "open_source"]
