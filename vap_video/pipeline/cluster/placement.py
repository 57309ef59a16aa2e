"""Which shard owns which camera: a bounded-load rendezvous (highest-random-weight) hash.

Every replica calls `assign` with the same registry and shard count and keeps its own part, so
the cluster needs no coordinator, no membership protocol and no stored assignment: the function
*is* the assignment. Pure Python, no Ray, deterministic across processes and machines (blake2b,
never Python's salted `hash()`).

How it works:
- Each camera ranks all shards by `blake2b(camera, shard)` (rendezvous hashing). Without a cap, a
  camera always lands on its first choice, so adding a camera moves no other camera, and going
  from S to S+1 shards moves only the cameras whose new first choice is the new shard (~1/(S+1)).
- Plain rendezvous hashing is balanced only on average; a shard is a GPU with a fixed capacity,
  so every shard gets a cap of `(1 + slack) x mean load` ("consistent hashing with bounded
  loads", Mirrokni, Thorup, Zadimoghaddam 2018). Cameras are placed in a fixed global order (by
  their own hash, independent of which other cameras exist); a camera whose first choice is full
  takes its next choice with room. The cap costs some movement: a camera added ahead of others
  in the order can fill a shard and push a later camera to its second choice. With the default
  slack that is rare (the tests measure it), and the paper bounds the expected cascade by
  O(1/slack^2) per insertion.
- Weights (e.g. width x height x fps) make the cap count pixels per second instead of cameras.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

# A 1080p camera at 25 fps weighs 1.0 (see `camera_weight`).
REFERENCE_PIXEL_RATE = 1920 * 1080 * 25.0
DEFAULT_SLACK = 0.25


def _h(*parts: str | int) -> int:
    data = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def shard_preference(camera: str, num_shards: int | Iterable[int]) -> list[int]:
    """Shards in the order this camera prefers them (highest rendezvous score first).

    `num_shards` is a count (shards 0..n-1) or the shard ids themselves (any whole numbers, e.g.
    the sticky slots of `ledger`): a camera ranks two shards the same way whichever others exist,
    which is what keeps ownership sticky when one of them goes away.
    """
    ids = range(num_shards) if isinstance(num_shards, int) else sorted(set(num_shards))
    return sorted(ids, key=lambda s: (-_h(camera, s), s))


def camera_weight(width: int | None, height: int | None, fps: float | None) -> float:
    """Relative decode+inference load of a camera: pixels per second / a 1080p25 camera's.

    Unknown parts count as the reference's (a camera with no size given weighs like 1080p).
    """
    w = width if width else 1920
    h = height if height else 1080
    f = fps if fps else 25.0
    return (w * h * f) / REFERENCE_PIXEL_RATE


def _as_weights(cameras: Mapping[str, float] | Iterable[str]) -> dict[str, float]:
    if isinstance(cameras, Mapping):
        weights = {str(k): float(v) for k, v in cameras.items()}
        if len(weights) != len(cameras):
            raise ValueError("camera ids must be unique")
    else:
        names = [str(c) for c in cameras]
        weights = dict.fromkeys(names, 1.0)
        if len(weights) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"camera ids must be unique; repeated: {', '.join(dup[:5])}")
    bad = [k for k, v in weights.items() if not (v > 0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"camera weights must be positive numbers; check {', '.join(sorted(bad)[:5])}")
    return weights


def shard_cap(total_weight: float, num_shards: int, slack: float = DEFAULT_SLACK,
              capacity: float | None = None) -> float:
    """The most load one shard takes before cameras spill to their next choice.

    `(1 + slack) x mean load`, rounded up to a whole load unit (one reference camera) so it
    shifts only every few cameras: each shift of a binding cap moves cameras. `capacity` (what one
    GPU handles, from `vap cluster plan --per-gpu`) lowers it further when it is smaller; a cap
    at capacity does not change when cameras come and go, so an added camera moves another only
    when it fills a full shard. Never below the mean load rounded up, so every camera fits.
    """
    floor = math.ceil(total_weight / num_shards - 1e-9)
    balanced = max(floor, math.ceil((1.0 + slack) * total_weight / num_shards - 1e-9))
    if capacity is not None:
        return float(max(floor, min(capacity, balanced)))
    return float(balanced)


def assign(cameras: Mapping[str, float] | Iterable[str], num_shards: int | Iterable[int],
           slack: float = DEFAULT_SLACK, capacity: float | None = None) -> dict[str, int]:
    """Map every camera id to exactly one shard in `range(num_shards)` (or of the given shard ids).

    `cameras`: ids (each weighs 1) or a mapping id -> weight. `num_shards`: a count, or the ids
    of the shards that exist (`ledger.Ledger.members`): removing one id then moves only its
    cameras, plus what the bounded-load rule must rebalance. A shard takes a camera while its load
    plus the camera's weight stays within `shard_cap` (an empty shard takes any camera, so one
    oversized camera still has a home); when no shard has room the least-loaded one takes it.
    Same inputs give the same result in every process.
    """
    if isinstance(num_shards, int) and not isinstance(num_shards, bool):
        if num_shards < 1:
            raise ValueError(f"num_shards must be a whole number >= 1, got {num_shards!r}")
        ids = list(range(num_shards))
    elif isinstance(num_shards, Iterable) and not isinstance(num_shards, (str, bytes)):
        ids = sorted(set(num_shards))
        if not ids or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
            raise ValueError(f"shard ids must be whole numbers >= 0, at least one; got {num_shards!r}")
    else:
        raise ValueError(f"num_shards must be a whole number >= 1, got {num_shards!r}")
    if not (slack >= 0 and math.isfinite(slack)):
        raise ValueError(f"slack must be >= 0, got {slack!r}")
    if capacity is not None and not (capacity > 0 and math.isfinite(capacity)):
        raise ValueError(f"capacity must be a positive number, got {capacity!r}")
    weights = _as_weights(cameras)
    if not weights:
        return {}
    cap = shard_cap(sum(weights.values()), len(ids), slack, capacity)
    tolerance = cap * 1e-9
    load = dict.fromkeys(ids, 0.0)
    out: dict[str, int] = {}
    for cam in sorted(weights, key=lambda c: (_h(c), c)):
        w = weights[cam]
        prefs = shard_preference(cam, ids)
        chosen = next((s for s in prefs if load[s] == 0.0 or load[s] + w <= cap + tolerance), None)
        if chosen is None:  # every shard is full (uneven weights near the cap)
            chosen = min(prefs, key=lambda s: load[s])
        load[chosen] += w
        out[cam] = chosen
    return out


def owned(assignment: Mapping[str, int], shard: int) -> set[str]:
    """The cameras one shard owns (empty for a shard number outside the assignment)."""
    return {cam for cam, s in assignment.items() if s == shard}


def loads(assignment: Mapping[str, int], num_shards: int,
          weights: Mapping[str, float] | None = None) -> list[float]:
    """Load per shard (camera count, or summed weights)."""
    out = [0.0] * num_shards
    for cam, s in assignment.items():
        out[s] += 1.0 if weights is None else weights[cam]
    return out


def moved(before: Mapping[str, int], after: Mapping[str, int]) -> set[str]:
    """Cameras present in both assignments whose shard changed."""
    return {cam for cam, s in before.items() if cam in after and after[cam] != s}


__all__ = ["DEFAULT_SLACK", "REFERENCE_PIXEL_RATE", "assign", "camera_weight", "loads", "moved", "owned",
           "shard_cap", "shard_preference"]
