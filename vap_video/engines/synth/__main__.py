"""`python -m vap_video.engines.synth ...`: the same as `vap data synth ...`."""

import sys

from vap_video.engines.synth.cli import cli

raise SystemExit(cli(sys.argv[1:]))
