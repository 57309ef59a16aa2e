"""Every Prometheus metric vap exposes, defined once.

Each pipeline owns its own `CollectorRegistry` (tests run several pipelines in one process, and a
global registry would mix them). Names follow the design's convention: `vap_` prefix, base units,
`_total` counters, `_seconds` histograms, gauges only for levels. Labels are bounded: stream name,
stage, reason, class, event type, sink — never a URL or a track id.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

# Latency buckets from 1 ms to 30 s: covers a CPU engine at batch 16 and a stalled live stream.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
                   1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)

# Reasons a frame is dropped; the set is closed so the label stays bounded.
DROP_REASONS = ("stale", "stride", "corrupt", "shutdown", "removed")
STREAM_STATES = ("starting", "streaming", "stalled", "backoff", "stopped", "finished", "failed")
# Why a finite input (a file) was not processed to its end; closed set, bounded label.
INCOMPLETE_REASONS = ("failed", "truncated")
AIRLIGHT_CHANNELS = ("r", "g", "b")  # "grey" is not used: frames in the data path are RGB


class Metrics:
    """The metric objects of one pipeline, registered in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.info = Info("vap_build", "vap version and engine in use", registry=r)
        # sources
        self.frames_decoded = Counter("vap_frames_decoded_total", "Frames decoded", ["stream"], registry=r)
        self.frames_processed = Counter(
            "vap_frames_processed_total", "Frames that went through the whole data path", ["stream"], registry=r)
        self.frames_dropped = Counter(
            "vap_frames_dropped_total", "Frames dropped, by reason", ["stream", "reason"], registry=r)
        self.decode_errors = Counter(
            "vap_decode_errors_total", "Corrupt packets or frames skipped by the decoder", ["stream"], registry=r)
        self.inputs_incomplete = Counter(
            "vap_inputs_incomplete_total", "Files not processed to their end: 'failed' (could not be opened or "
            "decoded; not retried) or 'truncated' (ended before their declared length)", ["stream", "reason"],
            registry=r)
        self.reconnects = Counter("vap_stream_reconnects_total", "Reconnect attempts", ["stream"], registry=r)
        self.stream_up = Gauge("vap_stream_up", "1 while the stream delivers frames", ["stream"], registry=r)
        self.stream_state = Gauge(
            "vap_stream_state", "1 for the stream's current state, 0 for the others", ["stream", "state"], registry=r)
        self.stream_fps = Gauge("vap_stream_fps", "Observed decode rate (frames/s)", ["stream"], registry=r)
        # data path
        self.stage_seconds = Histogram(
            "vap_stage_seconds", "Time spent per batch in each stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "vap_inference_seconds", "Engine time per batch", buckets=LATENCY_BUCKETS, registry=r)
        self.frame_latency = Histogram(
            "vap_frame_latency_seconds", "Capture to analytics done, per frame", ["stream"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.event_latency = Histogram(
            "vap_capture_to_event_seconds", "Capture of the frame to the event handed to the sinks",
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("vap_queue_depth", "Frames waiting in a queue", ["queue"], registry=r)
        self.engine_threads = Gauge("vap_engine_threads", "Intra-op threads of the CPU engine now (ONNX Runtime; "
                                    "with intra_op_threads 0, the count kept after the trial)", registry=r)
        self.batch_size = Histogram("vap_batch_size", "Frames per engine batch", buckets=BATCH_BUCKETS, registry=r)
        self.detections = Counter("vap_detections_total", "Detections after thresholds", ["class"], registry=r)
        self.active_tracks = Gauge("vap_active_tracks", "Confirmed tracks alive", ["stream"], registry=r)
        self.events = Counter("vap_events_total", "Events emitted", ["type"], registry=r)
        self.line_crossings = Counter("vap_line_crossings_total", "Objects crossing a configured line",
                                      ["stream", "line", "direction", "class"], registry=r)
        self.zone_occupancy = Gauge("vap_zone_occupancy", "Objects inside a configured zone",
                                    ["stream", "zone"], registry=r)
        # dehazing stage (vap_video.pipeline.dehaze), per stream while the stage is enabled
        self.dehaze_score = Gauge("vap_dehaze_haze_score", "Haze score of the last frame (mean low-res dark channel "
                                  "of the non-sky part, 0..1)", ["stream"], registry=r)
        self.dehaze_airlight = Gauge("vap_dehaze_airlight", "Smoothed atmospheric light A per colour channel (0..1)",
                                     ["stream", "channel"], registry=r)
        self.dehaze_active = Gauge("vap_dehaze_active", "1 while the haze gate has the dehazing stage on", ["stream"],
                                   registry=r)
        self.dehaze_seconds = Histogram("vap_dehaze_seconds", "Dehazing stage time per frame", ["stream"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        # sinks
        self.sink_events = Counter("vap_sink_events_total", "Events written by a sink", ["sink"], registry=r)
        self.sink_errors = Counter("vap_sink_errors_total", "Failed sink write attempts (retried)", ["sink"],
                                   registry=r)
        self.sink_dropped = Counter("vap_sink_dropped_total", "Events a sink could not accept in time and lost",
                                    ["sink"], registry=r)
        self.sink_up = Gauge("vap_sink_up", "1 while the sink can deliver (last attempt succeeded, or its "
                             "connection came back)", ["sink"], registry=r)
        self.sink_dead_letter = Counter(
            "vap_sink_dead_letter_total",
            "Events a sink gave up on after its retries (written to its dead-letter file)", ["sink"], registry=r)
        self.spool_events = Gauge("vap_spool_events", "Undelivered events waiting in a sink's disk spool", ["sink"],
                                  registry=r)
        self.spool_bytes = Gauge("vap_spool_bytes", "Disk space used by a sink's spool", ["sink"], registry=r)
        self.spool_age = Gauge("vap_spool_oldest_age_seconds", "How long the oldest spooled event has waited",
                               ["sink"], registry=r)
        self.spool_dropped = Counter("vap_spool_dropped_total", "Events lost because a sink's spool was full "
                                     "(by its drop policy)", ["sink"], registry=r)
        self.snapshots = Counter("vap_snapshots_total", "Event snapshots by result (written, skipped, failed)",
                                 ["result"], registry=r)
        # per-stream label sets of the event-derived metrics, so a removed stream's series go too
        self._derived: dict[str, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}

    def count_events(self, events: list[dict]) -> None:
        """Counters and gauges derived from events (one place, so they always agree with them)."""
        for e in events:
            self.events.labels(e["type"]).inc()
            if e["type"] == "line.cross":
                labels: tuple[str, ...] = (e["stream"], e["line"], e["direction"], e["class"])
                self.line_crossings.labels(*labels).inc()
                self._derived.setdefault(e["stream"], set()).add((self.line_crossings, labels))
            elif "occupancy" in e and "zone" in e:
                labels = (e["stream"], e["zone"])
                self.zone_occupancy.labels(*labels).set(e["occupancy"])
                self._derived.setdefault(e["stream"], set()).add((self.zone_occupancy, labels))

    def set_state(self, stream: str, state: str) -> None:
        """Mark `state` as the stream's current state (one-hot over STREAM_STATES)."""
        for s in STREAM_STATES:
            self.stream_state.labels(stream, s).set(1.0 if s == state else 0.0)
        self.stream_up.labels(stream).set(1.0 if state == "streaming" else 0.0)

    def forget_stream(self, stream: str) -> None:
        """Remove every series of a removed stream, so label sets do not grow with camera churn."""
        per_stream = (self.stream_up, self.stream_fps, self.active_tracks, self.frames_decoded,
                      self.frames_processed, self.decode_errors, self.reconnects, self.frame_latency,
                      self.dehaze_score, self.dehaze_active, self.dehaze_seconds)
        series: list[tuple[MetricWrapperBase, tuple[str, ...]]] = [
            *((m, (stream,)) for m in per_stream),
            *((self.frames_dropped, (stream, r)) for r in DROP_REASONS),
            *((self.inputs_incomplete, (stream, r)) for r in INCOMPLETE_REASONS),
            *((self.stream_state, (stream, s)) for s in STREAM_STATES),
            *((self.dehaze_airlight, (stream, c)) for c in AIRLIGHT_CHANNELS),
            *self._derived.pop(stream, set()),
        ]
        for metric, labels in series:
            with contextlib.suppress(KeyError):  # a series that was never set
                metric.remove(*labels)
