"""Inference backends behind one interface (see `base.Backend`)."""

from engines.backends.base import Backend, load_backend

__all__ = ["Backend", "load_backend"]
