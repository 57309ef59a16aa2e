"""vap: a streaming video analytics pipeline. `vap_video.pipeline` is the running system (sources,
batching, tracking, analytics, sinks, the API), `vap_video.engines` the detector, its training,
export and inference backends.

Why one namespace of its own: top-level packages named `pipeline` and `engines` collide with
unrelated PyPI distributions (installing PyPI's `pipeline` overwrote ours, uninstalling it deleted
files), and `vap` is taken on PyPI too. Under `vap_video` (distribution `vap-video`, command
`vap`) nothing else can claim the names.
"""

__version__ = "0.1.0"
