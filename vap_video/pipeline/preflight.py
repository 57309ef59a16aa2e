"""Checks at load that need more than the YAML: the model file and its class names, the input files.

`vap validate` runs all of them, so a config it calls valid also starts; `vap run` runs the ones
that decide whether a run can start at all (the model loads, its class names match the config,
there is something to run). Every problem is a `ConfigError` (exit 2) or a `ModelContractError`
(exit 3) phrased for the operator; nothing here raises anything else.
"""

from __future__ import annotations

from typing import Any

from vap_video.pipeline.config import ConfigError, redact_url
from vap_video.pipeline.settings import Settings


def check_streams_present(settings: Settings, source: str) -> None:
    """A run with no streams and no API to add any would serve for ever doing nothing: refuse it."""
    if not settings.streams and not settings.server.enabled:
        raise ConfigError(f"{source}: no streams, and the HTTP API that could add some (server.enabled) is off; "
                          f"list the cameras or files under `streams:`")


def check_class_names(settings: Settings, names: list[str]) -> None:
    """model.classes / model.class_conf and every zone's and line's classes must be the model's."""
    m = settings.model
    unknown = [c for c in [*m.class_conf, *(m.classes or [])] if c not in names]
    if unknown:
        raise ConfigError(f"model.classes/model.class_conf name unknown classes {unknown}; the model's classes "
                          f"are: {', '.join(names)}")
    settings.analytics.check_classes(names, where="analytics: ")
    for s in settings.streams:
        if s.analytics is not None:
            s.analytics.check_classes(names, where=f"streams.{s.name}.analytics: ")


def load_model_names(settings: Settings) -> tuple[list[str] | None, str]:
    """Open the model the way the run will and return (class names, backend) after closing it.

    A TensorRT model is not opened here (that may build an engine for minutes): its names come
    from the run itself, and None says they were not checked.
    """
    from vap_video.engines.backends import backend_kind, load_backend

    kind = backend_kind(settings.model.path, settings.model.backend)   # ModelContractError: missing, dir
    if kind == "tensorrt":
        return None, kind
    backend = load_backend(settings.model.path, kind, **settings.model.backend_options(kind))
    try:
        return list(backend.info.names), kind
    finally:
        backend.close()


def check_input_files(settings: Settings) -> list[str]:
    """Open every file stream (no decoding) the way its decoder will; one message per unusable file.

    Files configured `live: true` are skipped: they are stand-in cameras, allowed to appear later.
    """
    from vap_video.pipeline.source_errors import SourceError
    from vap_video.pipeline.sources import open_source

    problems = []
    for i, s in enumerate(settings.streams):
        if s.kind != "file" or s.live is True:
            continue
        src: Any = None
        try:
            src = open_source(s)
            src.open()
        except SourceError as exc:
            problems.append(f"streams[{i}] ({s.name}): {exc}")
        except Exception as exc:
            problems.append(f"streams[{i}] ({s.name}): {redact_url(s.url)}: cannot open ({type(exc).__name__})")
        finally:
            if src is not None:
                src.close()
    return problems
