"""vap runtime: sources, preprocessing, batching, inference, tracking, analytics, events, sinks."""

__version__ = "0.1.0"
