"""Event sinks: where events go (JSONL, MQTT, Kafka, webhook, Redis), each on its own thread.

Layout of this package:
- `base`: the `Sink` interface, the event filter, the keys every sink shares, `SinkKind`;
- `spool`: the disk spool that makes network sinks at-least-once;
- `runner`: `SinkRunner` (one sink's delivery thread) and `EventBus` (the fan-out);
- one module per kind (`jsonl`, `mqtt`, `kafka`, `webhook`, `redis`);
- `registry`: the list of kinds, the `sinks:` config union and `build_sink`.
"""

from vap_video.pipeline.sinks.base import EventFilter, PartialDelivery, Sink, SinkConfigBase, SinkKind
from vap_video.pipeline.sinks.jsonl import JsonlSink, JsonlSinkConfig
from vap_video.pipeline.sinks.kafka import KafkaSinkConfig
from vap_video.pipeline.sinks.mqtt import MqttSinkConfig
from vap_video.pipeline.sinks.redis import RedisSinkConfig
from vap_video.pipeline.sinks.registry import KINDS, SinkConfig, build_sink
from vap_video.pipeline.sinks.runner import EventBus, SinkRunner
from vap_video.pipeline.sinks.spool import Spool, SpoolConfig
from vap_video.pipeline.sinks.webhook import WebhookSinkConfig

__all__ = ["KINDS", "EventBus", "EventFilter", "JsonlSink", "JsonlSinkConfig", "KafkaSinkConfig", "MqttSinkConfig",
           "PartialDelivery", "RedisSinkConfig", "Sink", "SinkConfig", "SinkConfigBase", "SinkKind", "SinkRunner",
           "Spool", "SpoolConfig", "WebhookSinkConfig", "build_sink"]
