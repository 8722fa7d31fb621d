"""`rankitect-report`: not yet available."""

from __future__ import annotations

import sys


def main() -> None:
    sys.exit("rankitect-report is not yet available in this release; use rankitect-train.")
