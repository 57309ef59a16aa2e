"""The backend interface every engine runs behind.

A backend owns a compiled model and turns a preprocessed batch into `[B, K, 6]` detections. It
hides fixed-batch graphs (it splits the batch) so the batcher can always hand it any batch size up
to the configured maximum.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from vap_video.engines.contract import LEGACY, EngineInfo, check_output


class Backend(ABC):
    """A loaded engine. `info` describes its contract; `infer` runs one batch.

    Legacy one-to-many models (`info.layout == LEGACY`) come out of `infer` already in the contract
    form, through the NumPy NMS fallback with `nms_conf` / `nms_iou`.
    """

    info: EngineInfo
    name: str = "backend"
    nms_conf: float = 0.001
    nms_iou: float = 0.7

    @abstractmethod
    def _run(self, images: np.ndarray) -> np.ndarray:
        """Run a batch the graph accepts as is (size within `info.max_batch`)."""

    def infer(self, images: np.ndarray) -> np.ndarray:
        """`images` float32 [B, 3, H, W] -> float32 [B, K, 6]; splits batches a fixed graph can't take."""
        raw = self.infer_raw(images)
        if self.info.layout == LEGACY:
            from vap_video.engines.nms_fallback import decode_one_to_many
            return decode_one_to_many(raw, self.nms_conf, self.nms_iou, self.info.max_det)
        return raw

    def infer_raw(self, images: np.ndarray) -> np.ndarray:
        """The graph's own output for any batch size (padding or splitting for fixed-batch graphs)."""
        n, limit = images.shape[0], self.info.max_batch
        if limit is not None and n > limit:
            return np.concatenate([self.infer_raw(images[i:i + limit]) for i in range(0, n, limit)])
        if limit is not None and n < limit:
            pad = np.zeros((limit - n, *images.shape[1:]), dtype=images.dtype)
            out = self._run(np.concatenate([images, pad]))[:n]
        else:
            out = self._run(images)
        check_output(out, n, self.info)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:  # noqa: B027 (an optional hook: a backend with nothing to release keeps it)
        """Release the engine's resources."""
