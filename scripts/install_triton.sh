#!/usr/bin/env bash
# Triton Inference Server without Docker, from PyPI packages only: see export/triton_install.py
# (`bubo install-triton` does the same from an installed package).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m export.triton_install
