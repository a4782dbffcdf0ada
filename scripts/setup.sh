#!/usr/bin/env bash
# Creates .venv and installs the project with everything it needs, from the package registries.
# Usage: scripts/setup.sh [cpu|gpu]   (default: gpu when nvidia-smi works, else cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-}"
if [ -z "$flavour" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; else flavour=cpu; fi
fi
python="${PYTHON:-python3}"
stamp=".venv/.installed-$flavour-$(cat pyproject.toml scripts/setup.sh scripts/install_triton.sh export/triton_install.py | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi
[ -d .venv ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install -e ".[$flavour,test]"
if [ "$flavour" = cpu ]; then
    # PyPI's torchvision/torchaudio/torchcodec wheels are CUDA-linked and fail to import beside the
    # CPU torch (and then break transformers' model imports): nothing of ours needs them.
    .venv/bin/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true
fi
scripts/install_triton.sh
# the browser test of the web page drives Debian's Chromium (Playwright cannot download its own here);
# where it cannot be installed, that test skips and says why
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }) \
        || echo "setup: Debian's chromium could not be installed; tests/test_web.py will skip" >&2
fi
rm -f .venv/.installed-*
touch "$stamp"
