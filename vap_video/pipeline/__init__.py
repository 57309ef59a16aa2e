"""vap runtime: sources, preprocessing, batching, inference, tracking, analytics, events, sinks."""

from vap_video import __version__

__all__ = ["__version__"]
