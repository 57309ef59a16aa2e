"""Inference backends behind one interface (see `base.Backend`)."""

from vap_video.engines.backends.base import Backend
from vap_video.engines.backends.loader import backend_kind, load_backend

__all__ = ["Backend", "backend_kind", "load_backend"]
