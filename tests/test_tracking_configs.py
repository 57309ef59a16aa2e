"""The shipped tracker presets in configs/trackers/ load and validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vap_video.pipeline.tracking import ByteTracker, TrackerConfig

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs" / "trackers").glob("*.yaml"))


def test_presets_exist() -> None:
    assert {p.stem for p in PRESETS} >= {"bytetrack", "bytetrack_lowfps", "bytetrack_strict"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates(path: Path) -> None:
    cfg = TrackerConfig.model_validate(yaml.safe_load(path.read_text()))
    ByteTracker(cfg)


def test_default_preset_matches_model_defaults() -> None:
    data = yaml.safe_load((PRESETS[0].parent / "bytetrack.yaml").read_text())
    assert TrackerConfig.model_validate(data) == TrackerConfig()
