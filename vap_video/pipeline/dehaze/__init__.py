"""The dehazing stage: `prior` (the dark channel prior's maths), `stage` (per-stream state, the gate,
the runtime's dehazers), `torch_dehazer` (the same stage on torch tensors, CPU or CUDA).

The offline commands around it (`vap dehaze` preview, the dehaze benchmark) live in `vap_video.pipeline.tools`.
"""

from vap_video.pipeline.dehaze.prior import (
                                   dark_channel,
                                   estimate_airlight,
                                   flat_mask,
                                   guided_coefficients,
                                   haze_score,
                                   scaled_size,
                                   sky_mask,
                                   work_shape,
)
from vap_video.pipeline.dehaze.stage import (
                                   DehazeConfig,
                                   Dehazer,
                                   DehazeState,
                                   FrameInfo,
                                   StreamDehazers,
                                   fit_to,
                                   source_transform,
                                   thumbnail,
)

__all__ = ["DehazeConfig", "DehazeState", "Dehazer", "FrameInfo", "StreamDehazers", "dark_channel",
           "estimate_airlight", "fit_to", "flat_mask", "guided_coefficients", "haze_score", "scaled_size",
           "sky_mask", "source_transform", "thumbnail", "work_shape"]
