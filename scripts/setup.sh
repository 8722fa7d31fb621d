#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with the CPU build of
# torch and Rankitect (editable, with its dev extra). Safe to re-run; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${RANKITECT_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# torch first, pinned, so that resolving the project never pulls a multi-GB CUDA build.
"$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' \
  2>/dev/null || "${pip[@]}" install torch==2.13.0
"${pip[@]}" install -e ".[dev]"
