"""`rankitect-search`: not yet available."""

from __future__ import annotations

import sys


def main() -> None:
    sys.exit("rankitect-search is not yet available in this release; use rankitect-train.")
