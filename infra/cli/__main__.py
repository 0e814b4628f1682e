"""`python -m infra.cli`: what torchrun and the launchers start on every rank."""

import sys

from infra.cli import run

sys.exit(run())
