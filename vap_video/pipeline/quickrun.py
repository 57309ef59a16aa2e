"""`vap run SOURCE [SOURCE ...]`: run videos, folders, globs, cameras without writing a YAML.

In the spirit of `yolo track source=...`: each SOURCE becomes a stream (named after the file, or
the camera's host and path), the shipped model runs unless `--model` names another, and `--save
DIR` writes `DIR/events.jsonl` plus an annotated `DIR/<stream>.mp4` per stream. The result is an
ordinary `Settings`, so everything else (validation, exit codes, progress) is the YAML path's.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vap_video.pipeline.config import FILE_SUFFIXES, ConfigError, redact_url
from vap_video.pipeline.settings import Settings, parse_settings

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def is_config_path(args: list[str]) -> bool:
    """One argument ending in .yaml/.yml/.json is a deployment config (today's meaning of `vap run`)."""
    return len(args) == 1 and Path(args[0]).suffix.lower() in CONFIG_SUFFIXES


def _stream_name(source: str) -> str:
    """A valid, readable stream name: the file's stem, or host + path of a URL, or videoN."""
    lower = source.lower()
    if lower.startswith("synthetic://"):
        base = "synthetic"
    elif "://" in source and not lower.startswith("file://"):
        parts = urlsplit(source)
        base = "_".join(p for p in [parts.hostname or "", *parts.path.split("/")] if p)
    else:
        path = urlsplit(source).path if lower.startswith("file://") else source
        base = Path(path).stem if not lower.startswith("/dev/") else Path(path).name
    name = _UNSAFE.sub("_", base).strip("_.-")[:64]
    return name or "stream"


def expand_sources(args: list[str]) -> list[str]:
    """Files, folders (their videos, sorted), globs (sorted matches) and URLs, in order, no repeats.

    A path that names nothing is a ConfigError here (a typo on the command line is refused at
    once, before any model loads).
    """
    out: list[str] = []
    for arg in args:
        if "://" in arg or arg.startswith("/dev/"):
            found = [arg]
        elif any(ch in arg for ch in "*?["):
            found = sorted(p for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not found:
                raise ConfigError(f"{arg}: the pattern matches no file")
        elif Path(arg).is_dir():
            found = sorted(str(p) for p in Path(arg).iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
            if not found:
                raise ConfigError(f"{arg}: the folder holds no video file ({', '.join(sorted(FILE_SUFFIXES))})")
        elif Path(arg).exists():
            found = [arg]
        else:
            raise ConfigError(f"{arg}: no such file or folder (a deployment YAML must end in .yaml or .yml)")
        out.extend(f for f in found if f not in out)
    return out


def source_settings(sources: list[str], model: Path | None = None, save: Path | None = None,
                    conf: float | None = None, classes: list[str] | None = None, port: int | None = None) -> Settings:
    """The Settings of a source-first run (validated like any YAML: every problem is a ConfigError)."""
    urls = expand_sources(sources)
    streams: list[dict[str, Any]] = []
    taken: set[str] = set()
    for url in urls:
        base = name = _stream_name(url)
        n = 2
        while name in taken:
            name = f"{base[:60]}_{n}"
            n += 1
        taken.add(name)
        streams.append({"name": name, "url": url})
    data: dict[str, Any] = {"streams": streams, "server": {"enabled": port is not None, "port": port or 0}}
    model_cfg: dict[str, Any] = {}
    if model is not None:
        model_cfg["path"] = str(model)
    if conf is not None:
        model_cfg["conf"] = conf
    if classes:
        model_cfg["classes"] = classes
    data["model"] = model_cfg
    if save is not None:
        data["sinks"] = [{"type": "jsonl", "path": str(save / "events.jsonl")}]
        data["annotate"] = {"enabled": True, "dir": str(save)}
    shown = ", ".join(redact_url(u) for u in sources[:3]) + (" ..." if len(sources) > 3 else "")
    where = f"command line ({shown})"
    return parse_settings(data, where)
