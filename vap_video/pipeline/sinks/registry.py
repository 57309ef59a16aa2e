"""The sink registry: which kinds `sinks:` accepts, as one config union, and the factory.

Adding a sink is one new module in this package that ends with `KIND = SinkKind(Config, Sink)`
plus its name in `SINK_MODULES`; the YAML tag, the validation error's list of kinds, the
generated config reference and `build_sink` all follow from that line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from vap_video.pipeline.sinks.base import Sink, SinkConfigBase, SinkKind

# The registration line: modules of vap_video.pipeline.sinks that define a KIND, in the order docs list them.
SINK_MODULES: tuple[str, ...] = ("jsonl", "mqtt", "kafka", "webhook", "redis")


def _load_kinds() -> dict[str, SinkKind]:
    kinds: dict[str, SinkKind] = {}
    for module in SINK_MODULES:
        kind = getattr(importlib.import_module(f"vap_video.pipeline.sinks.{module}"), "KIND", None)
        if not isinstance(kind, SinkKind):
            raise TypeError(f"vap_video.pipeline.sinks.{module} is listed in SINK_MODULES but defines no "
                            "KIND = SinkKind(...)")
        if kind.type in kinds:
            raise TypeError(f"sink type {kind.type!r} is registered twice ({module})")
        kinds[kind.type] = kind
    return kinds


KINDS: dict[str, SinkKind] = _load_kinds()
"""Every registered sink kind by its `type` tag."""


class _SinkType:
    """The `type` of a sink entry; entries without one are JSONL (the original, typeless form).

    A class rather than a function so its repr, which the generated config reference prints, is
    stable from run to run.
    """

    def __call__(self, value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get("type", "jsonl")
        return getattr(value, "type", None)

    __name__ = "sink_type"

    def __repr__(self) -> str:
        return "type"


_NAMES = ", ".join(KINDS)

if TYPE_CHECKING:  # statically every entry is a SinkConfigBase; the union is built from the registry
    SinkConfig = SinkConfigBase
else:
    SinkConfig = Annotated[
        Union[tuple(Annotated[k.config, Tag(t)] for t, k in KINDS.items())],  # noqa: UP007 - built at runtime
        Discriminator(_SinkType(), custom_error_type="sink_type",
                      custom_error_message=f"unknown sink type, or an entry that is not a mapping; write "
                                           f"each entry as `- type: KIND` with KIND one of {_NAMES}"),
    ]
"""One entry of `sinks:`; `type` picks the kind (one of the registered KINDS)."""


def build_sink(cfg: SinkConfigBase) -> Sink:
    """Open the sink a config describes (client libraries are imported here, lazily)."""
    kind = KINDS.get(getattr(cfg, "type", ""))
    if kind is None or not isinstance(cfg, kind.config):
        raise ValueError(f"unknown sink type {cfg!r}")
    sink = kind.sink(cfg)  # type: ignore[call-arg]
    sink.spool_config = cfg.spool
    return sink
