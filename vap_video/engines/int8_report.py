"""The INT8 report that `vap quantize` measures and stores in a model's metadata, in one line.

Its own module because the ONNX Runtime backend logs it when it loads an INT8 model, and the
backend must not import the quantizer (which imports the backend to measure the model).
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe"]


def describe(report: dict[str, Any]) -> str:
    """One line for logs: what INT8 costs and gains."""
    m = report["map50_95"]
    return (f"INT8 mAP50-95 {m['int8']:.3f} vs fp32 {m['fp32']:.3f} ({report['map50_95_change']:+.3f}) on "
            f"{report['images']} images of {report['data']}; {report['speedup']:.2f}x the fp32 speed at batch "
            f"{report['batch']} on {report['cpu']}")
