#!/usr/bin/env bash
# Triton Inference Server without Docker, from PyPI packages only (see shared/STACK.md):
#  * the `tritonserver` binary, its python backend and shared libraries, unpacked from the
#    nvidia-pytriton wheel into .venv/triton/ (the package itself is not installed, so its
#    numpy<2 / protobuf pins stay out of .venv);
#  * .venv/triton/pyenv: the environment the python-backend models run in (the backend stub is
#    built against numpy 1, so numpy<2 there), with this project installed in editable mode;
#  * perf_analyzer from tritonclient 2.51.0's manylinux1 wheel (newer ones need glibc 2.38).
set -euo pipefail
cd "$(dirname "$0")/.."
root=.venv/triton
py=.venv/bin/python
pyver=$($py -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$root/server/bin/tritonserver" ]; then
    $py -m pip download --no-deps --quiet --dest "$tmp" "nvidia-pytriton==0.7.0"
    $py -m zipfile -e "$tmp"/nvidia_pytriton-*.whl "$tmp/wheel"
    rm -rf "$root/server" "$root/libs"
    mkdir -p "$root"
    mv "$tmp/wheel/pytriton/tritonserver" "$root/server"
    mv "$tmp/wheel/nvidia_pytriton.libs" "$root/libs"
    cp "$root/server/python_backend_stubs/$pyver/triton_python_backend_stub" "$root/server/backends/python/"
    # zip extraction drops the executable bits
    chmod +x "$root/server/bin/tritonserver" "$root/server/backends/python/triton_python_backend_stub"
fi

if [ ! -x "$root/pyenv/bin/python" ]; then
    torch_version=$($py -c 'import torch; print(torch.__version__.split("+")[0])')
    transformers_version=$($py -c 'import transformers; print(transformers.__version__)')
    python3 -m venv "$root/pyenv"
    "$root/pyenv/bin/python" -m pip install --quiet "numpy<2" "scipy>=1.11,<1.15" onnxruntime pillow soundfile safetensors \
        "torch==$torch_version" "transformers==$transformers_version"
    "$root/pyenv/bin/python" -m pip install --quiet --no-deps -e .
fi

if [ ! -x "$root/perf/bin/perf_analyzer" ]; then
    $py -m pip download --no-deps --quiet --dest "$tmp/pa" --platform manylinux1_x86_64 --only-binary=:all: "tritonclient==2.51.0"
    $py -m zipfile -e "$tmp"/pa/tritonclient-*.whl "$tmp/pa/wheel"
    mkdir -p "$root/perf/bin" "$root/perf/lib"
    cp "$(find "$tmp/pa/wheel" -path '*data/bin/perf_analyzer' | head -1)" "$root/perf/bin/perf_analyzer"
    chmod +x "$root/perf/bin/perf_analyzer"
    # its libraries come from the server's lib directory, under the names it asks for
    ln -sf "$(cd "$root/libs" && ls "$PWD"/libb64-*.so.0d | head -1)" "$root/perf/lib/libb64.so.0d"
    ln -sf "$(cd "$root/libs" && ls "$PWD"/libcudart-*.so.12* | head -1)" "$root/perf/lib/libcudart.so.12"
fi
