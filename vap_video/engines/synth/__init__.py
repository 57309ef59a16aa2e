"""Deterministic synthetic scenes: still images with YOLO labels, and videos with MOT ground truth.

Why synthetic: tests, the demo camera, benchmarks and the shipped demo model all need pictures with
exact ground truth and no licence strings attached. Everything here is a pure function of a seed
(and a frame index), so a test failure reproduces, a stream can restart at any frame, and two
machines render identical pixels.

What a scene has (so a detector trained on it learns shape, not colour):
- 4 classes (:data:`CLASS_NAMES`), each a shape family with random colours, textures, limb poses and
  aspect ratios drawn from the *same* colour distribution for every class;
- cluttered backgrounds: sky/ground gradients, buildings with windows, a road band with lane marks,
  poles, circles and boxes as distractors, low- and high-frequency noise;
- a wide scale range (objects from ~2 % to ~60 % of the picture's long side), truncation at the
  borders, occlusion (objects drawn far to near, visibility measured from an id buffer), motion blur
  along each object's velocity, global gain/gamma drift, optional haze (:mod:`vap_video.engines.haze`).

Rendering uses NumPy + OpenCV drawing only (no torch). A video pre-renders its background once and
each object's sprite once per appearance, so a 1280x720 frame is a copy, a few small blends and a
lookup table (a few milliseconds).

Layout: `objects` (classes, ground truth), `sprites` (the class shape families), `compose`
(backgrounds, lighting, compositing), `images` (stills and YOLO datasets), `video` (scene videos
with MOT ground truth), `cli` (`vap data`).
"""

from vap_video.engines.synth.cli import cli
from vap_video.engines.synth.images import render_image, write_yolo_dataset
from vap_video.engines.synth.objects import BICYCLE, CAR, CLASS_NAMES, DOG, PERSON, GTObject
from vap_video.engines.synth.video import SceneVideo, write_video

__all__ = ["BICYCLE", "CAR", "CLASS_NAMES", "DOG", "PERSON", "GTObject", "SceneVideo", "cli", "render_image",
           "write_video", "write_yolo_dataset"]
