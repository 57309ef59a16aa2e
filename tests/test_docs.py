"""The README's config reference is the generated one (so docs cannot drift from the code)."""

from pathlib import Path

from vap_video.pipeline.tools.docs import config_reference, readme_section

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_reference_is_current():
    assert readme_section(README) == config_reference(), (
        "README config reference is stale: regenerate with `python -m vap_video.pipeline.tools.docs README.md`")
