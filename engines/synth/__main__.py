"""`python -m engines.synth ...`: the same as `vap data synth ...`."""

import sys

from engines.synth.cli import cli

raise SystemExit(cli(sys.argv[1:]))
