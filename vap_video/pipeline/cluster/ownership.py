"""One replica's side of the ledger: its sticky slot, its heartbeat, its cameras' incarnations.

`ShardWorker` uses this when it runs under Ray (`worker.StreamWorker` passes a `Ledger` on the
GCS); without one it falls back to Serve's rank (the unit tests, a single process). Rules:

- **Sticky shards.** The shard id is the replica's slot (`Ledger.claim_slot`), never Serve's
  rank; the assignment runs over the slots of the live replicas, and only when there are exactly
  `num_shards` of them. In between (a replica starting, stopping or dead and not yet replaced)
  every replica keeps what it runs: a downscale moves only the leaving replica's cameras, an
  upscale only those the new slot wins, and a crashed replica's cameras wait for its replacement,
  which inherits its slot (or, after `stale_s`, whoever claims the dead slot).
- **Incarnations.** Each camera a replica starts gets the camera's next owner number; its track
  ids carry it (`StreamAnalytics`), so ids never repeat across owners.
- **Handover reports.** Stopping a camera that moves writes a release marker; the new owner's
  first `stream.up` becomes `reason: handover` (with `gap_s`), or, when the previous owner died,
  `stream.gap` + `stream.up` with `reason: takeover` and the gap since its last reported frame.

GCS trouble (a head restart) never stops the data path: heartbeats and membership checks are
skipped until the GCS answers again; only starting a camera needs it (for the incarnation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from vap_video.pipeline.cluster.placement import assign, owned
from vap_video.pipeline.cluster.ledger import Ledger, resume
from vap_video.pipeline.events import make_event

log = logging.getLogger("vap.cluster")


class Ownership:
    """Slot, membership, incarnations and last-frame times of one replica (see the module docstring)."""

    def __init__(self, ledger: Ledger, replica: str, node: str | None = None) -> None:
        self.ledger = ledger
        self.replica = replica
        self.node = node
        self.slot: int | None = None
        self.members: dict[int, str] = {}
        self.applied: tuple[Any, ...] | None = None   # the membership the current cameras were computed for
        self.incarnations: dict[str, int] = {}
        self.last_frame: dict[str, float] = {}
        self.leaving = False
        self.kv_error: str | None = None

    # ------------------------------------------------------------- membership
    def refresh(self, num_shards: int) -> bool:
        """Claim a slot if this replica has none, read who is alive; True when the live slots
        differ from those the current cameras were computed for. False (and `kv_error`) when the
        GCS does not answer."""
        try:
            if self.slot is None and not self.leaving:
                self.slot = self.ledger.claim_slot(self.replica, num_shards)
                if self.slot is not None:
                    log.info("replica %s holds slot %d", self.replica, self.slot)
            self.members = self.ledger.members()
        except Exception as exc:
            self.kv_error = f"GCS: {type(exc).__name__}: {exc}"
            return False
        self.kv_error = None
        return self._view() != self.applied

    def _view(self) -> tuple[Any, ...]:
        return (self.slot, *sorted(self.members.items()))

    def active(self, num_shards: int) -> bool:
        """This replica is one of exactly `num_shards` live slots: the assignment applies."""
        return self.slot is not None and self.slot in self.members and len(self.members) == num_shards

    def mine(self, weights: Mapping[str, float], num_shards: int, slack: float, capacity: float | None,
             current: set[str]) -> set[str]:
        """The cameras to run: this slot's part of the assignment over the live slots, or, while
        the live slots are not exactly `num_shards`, the current ones (minus cameras that left
        the registry)."""
        self.applied = self._view()
        if self.active(num_shards):
            table = assign(dict(weights), list(self.members), slack, capacity)
            return owned(table, self.slot) if self.slot is not None else set()
        return {c for c in current if c in weights}

    # ------------------------------------------------------------- cameras
    def claim(self, stream: str) -> int:
        """The owner incarnation for a camera this replica starts; ValueError when the GCS cannot
        give one (the camera is reported failed rather than run with ids that could repeat)."""
        try:
            n = self.ledger.claim_incarnation(stream, self.replica)
        except Exception as exc:
            raise ValueError(f"cannot draw an owner incarnation from the GCS ({type(exc).__name__}: {exc}); "
                             "the camera starts when the GCS answers again") from None
        self.incarnations[stream] = n
        return n

    def released(self, stream: str) -> None:
        """The camera was stopped on purpose: mark the handover for its next owner."""
        n = self.incarnations.pop(stream, None)
        last = self.last_frame.pop(stream, None)
        if n is None:
            return
        try:
            self.ledger.release(stream, n, last)
        except Exception as exc:
            log.warning("could not mark the handover of %s: %s", stream, exc)

    def first_up(self, stream: str, incarnation: int) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
        """The hook `Pipeline.add_stream` calls with the camera's first stream.up (first frame)."""
        def hook(event: dict[str, Any]) -> list[dict[str, Any]]:
            now = time.time()
            try:
                how = resume(self.ledger.previous(stream, incarnation), now)
            except Exception as exc:
                log.warning("stream %s: cannot read its previous owner: %s", stream, exc)
                return [event]
            if how is None:
                return [event]
            kind, gap = how
            event = {**event, "reason": kind, "gap_s": round(gap, 3)}
            if kind == "handover":
                return [event]
            log.warning("stream %s: took over from a dead owner, %.1f s not processed", stream, gap)
            return [make_event("stream.gap", stream, now, state=event.get("state", "streaming"),
                               reason="takeover", gap_s=round(gap, 3)), event]
        return hook

    def on_frame(self, frame: Any, *_: Any) -> None:
        """Pipeline result hook: the capture time of the last processed frame per camera."""
        self.last_frame[frame.stream] = frame.capture_ts

    # ------------------------------------------------------------- heartbeat
    def beat(self, record: dict[str, Any]) -> None:
        """Publish this replica's status record (skipped, with `kv_error`, when the GCS is down)."""
        try:
            self.ledger.beat(self.replica, {**record, "slot": self.slot, "node": self.node,
                                            "leaving": self.leaving,
                                            "last_frame_ts": dict(self.last_frame)})
        except Exception as exc:
            self.kv_error = f"GCS: {type(exc).__name__}: {exc}"

    def leave(self, record: dict[str, Any]) -> None:
        """Clean shutdown, step one: out of the membership at once, so the others take over."""
        self.leaving = True
        self.beat(record)
        try:
            self.ledger.release_slot(self.replica)
        except Exception as exc:
            log.warning("could not release slot %s: %s", self.slot, exc)

    def gone(self) -> None:
        """Clean shutdown, last step: the heartbeat record goes."""
        try:
            self.ledger.forget(self.replica)
        except Exception as exc:
            log.warning("could not remove the heartbeat of %s: %s", self.replica, exc)


__all__ = ["Ownership"]
