"""Scene videos with MOT ground truth: `SceneVideo` (frame i is a pure function of seed and i) and
`write_video`."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from vap_video.engines.haze import add_haze, transmission_map
from vap_video.engines.synth.objects import BICYCLE, CAR, CLASS_NAMES, DOG, PERSON, GTObject
from vap_video.engines.synth.sprites import Sprite, motion_blur, render_sprite, scale_sprite
from vap_video.engines.synth.compose import Placed, composite, lighting_lut, render_background, visible_ground_truth


# base long side (pixels at the bottom of a 720-row frame) and speed (pixels/second) per class
_BASE_SIZE = {PERSON: 200.0, CAR: 300.0, BICYCLE: 190.0, DOG: 110.0}
_SPEED = {PERSON: (40.0, 110.0), CAR: (180.0, 420.0), BICYCLE: (110.0, 230.0), DOG: (70.0, 170.0)}


@dataclass
class _Life:
    """One appearance of an object in a slot: from entering to leaving the frame."""

    j: int  # the slot's life number (0, 1, 2, ...)
    start: float  # frame index at which it enters (may be negative: already in view at frame 0)
    duration: float  # frames
    track_id: int
    class_id: int
    size_mul: float
    p0: tuple[float, float]  # (x centre, bottom y) at the start, in frame-height units
    p1: tuple[float, float]
    wiggle: tuple[float, float, float]  # amplitude (px at 720), cycles per life, phase
    slow: float  # time-warp strength 0..0.85: slows down mid-way (loitering)
    sprite_seed: int


class SceneVideo:
    """A deterministic synthetic camera: `frame(i)` is a pure function of (seed, i).

    Objects live in `num_objects` slots. Each slot holds one object at a time, which enters, moves
    along a smooth path (constant heading with a lateral wiggle and an optional mid-way slow-down)
    and leaves; then, after a short gap, a new object with a new `track_id` enters. Slot 0 always
    moves vertically and crosses the horizontal middle line (y = height / 2); the other slots move
    horizontally with their feet in the lower 2/3 of the frame, so all of them pass through
    :attr:`zone_hint`. Size follows a simple perspective: objects lower in the frame are bigger.

    haze is 1 - transmission at the farthest rows (0 = clear, 0.7 = thick).
    """

    def __init__(
        self,
        seed: int,
        width: int = 1280,
        height: int = 720,
        fps: float = 25.0,
        num_objects: int = 6,
        haze: float = 0.0,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"SceneVideo needs at least 32x32 pixels, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if num_objects < 0 or num_objects > 250:
            raise ValueError(f"num_objects must be 0..250, got {num_objects}")
        if not 0.0 <= haze < 1.0:
            raise ValueError(f"haze must be in [0, 1), got {haze}")
        self.seed, self.width, self.height = int(seed), int(width), int(height)
        self.fps, self.num_objects, self.haze = float(fps), int(num_objects), float(haze)
        rng = np.random.default_rng([self.seed, 0xB6])
        bg, horizon = render_background(self.height, self.width, rng)
        self.horizon = horizon
        self._airlight = 0.88
        self._t_rows: np.ndarray | None = None
        if self.haze > 0:
            self._t_rows = transmission_map(self.height, self.width, 1.0 - self.haze, True, 0.3)
            bg = add_haze(bg, self._t_rows, self._airlight)
        self.background = bg
        light = np.random.default_rng([self.seed, 0x11]).uniform(0, 2 * math.pi, size=4)
        self._light_phase = light
        self._lives: list[list[_Life]] = [[] for _ in range(self.num_objects)]
        self._max_lives = 64
        self._sprites: OrderedDict[int, Sprite] = OrderedDict()

    # -- geometry hints for tests and demos -----------------------------------------------------
    @property
    def middle_line(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """A horizontal line across the middle of the frame that slot 0's objects cross."""
        y = self.height / 2
        return (0.0, y), (float(self.width), y)

    @property
    def zone_hint(self) -> tuple[float, float, float, float]:
        """A box (x1, y1, x2, y2) in the middle of the frame that every horizontal mover crosses."""
        return (0.4 * self.width, 0.35 * self.height, 0.6 * self.width, 1.0 * self.height)

    # -- timeline ------------------------------------------------------------------------------
    def _new_life(self, slot: int, j: int, start: float | None) -> _Life:
        rng = np.random.default_rng([self.seed, slot, j, 0x5CE])
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        size_mul = math.exp(rng.uniform(math.log(0.4), math.log(1.4)))
        aspect = self.width / self.height
        # largest long side this object reaches (perspective scale tops out at 1.3), in heights
        l_max = _BASE_SIZE[cls] / 720.0 * size_mul * 1.3
        if slot == 0:
            x_a, x_b = rng.uniform(0.2, 0.8) * aspect, rng.uniform(0.2, 0.8) * aspect
            top, bottom = rng.uniform(0.12, 0.3), 1.02 + l_max  # leaves just past the bottom edge
            p0, p1 = ((x_a, top), (x_b, bottom)) if rng.random() < 0.5 else ((x_b, bottom), (x_a, top))
        else:
            ya, yb = rng.uniform(0.4, 1.05), rng.uniform(0.4, 1.05)
            margin = 0.5 * l_max + 0.02
            p0, p1 = (-margin, ya), (aspect + margin, yb)
            if rng.random() < 0.5:
                p0, p1 = (p1[0], yb), (p0[0], ya)
        dist = math.hypot(p1[0] - p0[0], p1[1] - p0[1]) * self.height
        speed = rng.uniform(*_SPEED[cls]) * (self.height / 720.0) * (0.6 + 0.4 * size_mul)
        duration = max(8.0, dist / speed * self.fps)
        wig = (rng.uniform(0, 25.0), rng.uniform(0.5, 2.5), rng.uniform(0, 2 * math.pi))
        slow = rng.uniform(0.0, 0.85) if rng.random() < 0.5 else 0.0
        if start is None:
            start = -rng.uniform(0.0, 0.9) * duration
        return _Life(j, start, duration, j * self.num_objects + slot + 1, cls, size_mul, p0, p1, wig, slow,
                     int(rng.integers(0, 2**31)))

    def _life_at(self, slot: int, index: int) -> _Life | None:
        lives = self._lives[slot]
        if not lives or lives[0].start > index:
            # first call, or a jump back before the kept window: replay the timeline from life 0
            lives.clear()
            lives.append(self._new_life(slot, 0, None))
        while lives[-1].start + lives[-1].duration <= index:
            last = lives[-1]
            gap_rng = np.random.default_rng([self.seed, slot, last.j + 1, 0x6A9])
            gap = gap_rng.uniform(0.0, 2.5) * self.fps
            lives.append(self._new_life(slot, last.j + 1, last.start + last.duration + gap))
            if len(lives) > self._max_lives:  # bounded memory on endless streams
                del lives[: len(lives) - self._max_lives // 2]
        # binary search for the life covering this index
        lo, hi = 0, len(lives) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if lives[mid].start <= index:
                lo = mid
            else:
                hi = mid - 1
        life = lives[lo]
        if life.start <= index < life.start + life.duration:
            return life
        return None

    def _position(self, life: _Life, t: float) -> tuple[float, float]:
        """(x centre, bottom y) in pixels at frame time t (may lie outside the frame)."""
        tau = min(max((t - life.start) / life.duration, 0.0), 1.0)
        u = tau - life.slow * math.sin(2 * math.pi * tau) / (2 * math.pi)  # monotone, slow mid-way
        x = (life.p0[0] + (life.p1[0] - life.p0[0]) * u) * self.height
        y = (life.p0[1] + (life.p1[1] - life.p0[1]) * u) * self.height
        amp, cycles, phase = life.wiggle
        off = amp * (self.height / 720.0) * math.sin(2 * math.pi * cycles * tau + phase)
        dx, dy = life.p1[0] - life.p0[0], life.p1[1] - life.p0[1]
        n = math.hypot(dx, dy) or 1.0
        return x - dy / n * off, y + dx / n * off

    def _scale(self, y_bottom: float) -> float:
        """Perspective: 1 at the bottom row, shrinking towards the horizon."""
        return float(np.clip(0.2 + 0.8 * y_bottom / self.height, 0.2, 1.3))

    def _sprite(self, life: _Life) -> Sprite:
        s = self._sprites.get(life.track_id)
        if s is None:
            L = _BASE_SIZE[life.class_id] * life.size_mul * self.height / 720.0
            s = render_sprite(life.class_id, max(8.0, L), np.random.default_rng(life.sprite_seed))
            self._sprites[life.track_id] = s
            while len(self._sprites) > 4 * self.num_objects + 8:  # bounded: old lives never return
                self._sprites.popitem(last=False)
        else:
            self._sprites.move_to_end(life.track_id)
        return s

    def _lighting(self, index: int) -> np.ndarray:
        t = index / self.fps
        ph = self._light_phase
        gain = 1.0 + 0.12 * math.sin(2 * math.pi * t / 23.0 + ph[0]) + 0.05 * math.sin(2 * math.pi * t / 7.0 + ph[1])
        gamma = 1.0 + 0.12 * math.sin(2 * math.pi * t / 31.0 + ph[2])
        return lighting_lut(gain, gamma)

    # -- rendering -----------------------------------------------------------------------------
    def background_frame(self, index: int) -> np.ndarray:
        """The empty scene at frame `index` (background with that frame's lighting)."""
        return cv2.LUT(self.background, self._lighting(index))

    def ground_truth(self, index: int) -> list[GTObject]:
        """Ground truth of frame `index` without painting it, for tracker benchmarks that need only
        labels: the same objects and boxes as `frame(index)[1]` in about half the time. Visibility
        can differ by a few hundredths, because motion-blurred sprite edges are not painted over the
        objects behind them."""
        return self._render(index, paint=False)[1]

    def frame(self, index: int) -> tuple[np.ndarray, list[GTObject]]:
        """Render frame `index` (0-based): RGB uint8 [height, width, 3] and its ground truth."""
        img, gts = self._render(index, paint=True)
        assert img is not None
        return img, gts

    def _render(self, index: int, paint: bool) -> tuple[np.ndarray | None, list[GTObject]]:
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        placed_src = []
        for slot in range(self.num_objects):
            life = self._life_at(slot, index)
            if life is None:
                continue
            x, yb = self._position(life, index)
            # motion over half a frame interval (a 1/50 s shutter at 25 fps)
            xa, ya = self._position(life, index - 0.25)
            xb, yb2 = self._position(life, index + 0.25)
            placed_src.append((yb, life, x, xb - xa, yb2 - ya))
        placed_src.sort(key=lambda o: o[0])
        frame = self.background.copy() if paint else None
        ids = np.zeros((self.height, self.width), np.uint8)
        placed: list[Placed] = []
        for yb, life, x, vx, vy in placed_src:
            base = self._sprite(life)
            sprite = scale_sprite(base, self._scale(yb))
            h, w = sprite.size
            x0, y0 = int(round(x - w / 2)), int(round(yb - h))
            if x0 >= self.width or y0 >= self.height or x0 + w <= 0 or y0 + h <= 0:
                continue
            solid = sprite.alpha > 0.5
            if frame is not None:
                drawn, pad = motion_blur(sprite, vx, vy)
                composite(frame, ids, drawn, x0 - pad, y0 - pad, 0, self._t_rows, self._airlight)
            fx0, fy0 = max(0, x0), max(0, y0)
            fx1, fy1 = min(self.width, x0 + w), min(self.height, y0 + h)
            ids[fy0:fy1, fx0:fx1][solid[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]] = len(placed) + 1
            placed.append(Placed(life.track_id, life.class_id, x0, y0, h, w, solid))
        gts = visible_ground_truth(placed, ids)
        return (None if frame is None else cv2.LUT(frame, self._lighting(index))), gts


def _codec_name(codec: str) -> str:
    return {"h264": "libx264", "avc": "libx264", "hevc": "libx265", "h265": "libx265"}.get(codec, codec)


def write_video(
    path: Path,
    seed: int,
    frames: int,
    width: int,
    height: int,
    fps: float,
    num_objects: int = 6,
    haze: float = 0.0,
    codec: str = "h264",
) -> Path:
    """Encode a :class:`SceneVideo` to a file with PyAV and write MOTChallenge ground truth beside it.

    The container comes from the suffix (.mp4, .mkv, .ts, ...); H.264 is libx264 with yuv420p
    (so width and height must be even). Ground truth goes to ``<stem>.gt.txt`` in the same folder,
    one row per object per frame: ``frame,id,x,y,w,h,1,class_id,visibility`` with 1-based frames,
    top-left/width/height boxes in pixels and our 0-based class ids.
    """
    import av
    from av.video.stream import VideoStream  # also in PyAV 12 (av.VideoStream is newer)

    path = Path(path)
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p video needs even width and height, got {width}x{height}")
    scene = SceneVideo(seed, width, height, fps, num_objects, haze)
    codec_name = _codec_name(codec)
    try:
        av.codec.Codec(codec_name, "w")
    except Exception:
        raise ValueError(f"unknown or unavailable video encoder {codec!r}; use h264 (libx264), hevc or mpeg4") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    gt_path = path.with_name(path.stem + ".gt.txt")
    rows: list[str] = []
    try:
        container = av.open(str(path), mode="w")
    except ValueError:
        raise ValueError(f"cannot tell the container format from {path.name!r}; use a .mp4, .mkv or .ts "
                         "suffix") from None
    try:
        stream = container.add_stream(codec_name, rate=rate)
        if not isinstance(stream, VideoStream):
            raise ValueError(f"codec {codec!r} is not a video codec; use h264, hevc or mpeg4")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if stream.codec_context.name in ("libx264", "libx265"):
            stream.options = {"preset": "veryfast", "crf": "20"}
        for i in range(frames):
            img, gts = scene.frame(i)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1) / rate
            for packet in stream.encode(vf):
                container.mux(packet)
            for g in gts:
                x1, y1, x2, y2 = g.box
                rows.append(f"{i + 1},{g.track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1,"
                            f"{g.class_id},{g.visibility:.4f}")
        for packet in stream.encode(None):
            container.mux(packet)
    finally:
        container.close()
    gt_path.write_text("\n".join(rows) + ("\n" if rows else ""))
    return path
