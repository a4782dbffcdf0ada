"""Triton Inference Server without Docker, from PyPI packages only, and where it lives.

    bubo install-triton          # or: python -m export.triton_install   (scripts/setup.sh runs it)

Into `triton_home()` (`$BUBO_TRITON_HOME`, default `<venv>/triton`):
  * `server/`, `libs/`: the `tritonserver` binary, its python backend and shared libraries, unpacked
    from the nvidia-pytriton wheel (the package itself is not installed, so its numpy<2 / protobuf
    pins stay out of the serving environment; see shared/STACK.md);
  * `pyenv/`: the environment the python-backend models run in (the backend stub is built against
    numpy 1, so numpy<2 there) with ONNX Runtime and the same torch/transformers as this one. It sees
    this project's model library through `project/bubogpt`, a link to wherever `bubogpt` is installed
    (the source tree of an editable install, or site-packages), and nothing else of this environment;
  * `perf/`: perf_analyzer from tritonclient 2.51.0's manylinux1 wheel (newer ones need glibc 2.38).
Each part is skipped when present.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

PYTRITON = "nvidia-pytriton==0.7.0"
PERF_ANALYZER_CLIENT = "tritonclient==2.51.0"
MODEL_ENV_EXTRAS = ("pycocotools>=2.0.8",)  # built against numpy 2, runs on the environment's numpy 1


def triton_home() -> Path:
    return Path(os.environ.get("BUBO_TRITON_HOME", Path(sys.prefix) / "triton"))


def model_env_dir() -> Path:
    """The venv the python-backend models run in (numpy<2, ONNX Runtime, this project's model library)."""
    return triton_home() / "pyenv"


def _pip(python: str | Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def _unzip(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(out)


def install_server(root: Path, tmp: Path) -> None:
    if (root / "server" / "bin" / "tritonserver").is_file():
        return
    log.info("installing tritonserver from %s", PYTRITON)
    _pip(sys.executable, "download", "--no-deps", "--quiet", "--dest", str(tmp), PYTRITON)
    _unzip(next(tmp.glob("nvidia_pytriton-*.whl")), tmp / "wheel")
    for name in ("server", "libs"):
        shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp / "wheel" / "pytriton" / "tritonserver"), root / "server")
    shutil.move(str(tmp / "wheel" / "nvidia_pytriton.libs"), root / "libs")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = root / "server" / "backends" / "python" / "triton_python_backend_stub"
    shutil.copy(root / "server" / "python_backend_stubs" / version / "triton_python_backend_stub", stub)
    for binary in (root / "server" / "bin" / "tritonserver", stub):  # zip extraction drops the executable bits
        binary.chmod(0o755)


def install_model_env(root: Path) -> None:
    env = root / "pyenv"
    python = env / "bin" / "python"
    if not python.is_file():
        import torch
        import transformers

        log.info("creating the python-backend environment %s", env)
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(env)], check=True)
        _pip(python, "install", "--quiet", "numpy<2", "scipy>=1.11,<1.15", "onnxruntime", "pillow", "soundfile", "safetensors",
             f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}")
    _pip(python, "install", "--quiet", *MODEL_ENV_EXTRAS)  # what later versions of the project added (idempotent)
    link_project(root)


def link_project(root: Path) -> None:
    """`pyenv` imports `bubogpt` from wherever this environment has it, through a link (idempotent)."""
    import bubogpt

    project = root / "project"
    project.mkdir(parents=True, exist_ok=True)
    link = project / "bubogpt"
    target = Path(bubogpt.__path__[0]).resolve()
    if link.is_symlink() and link.resolve() == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    python = root / "pyenv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "bubo_project.pth").write_text(f"{project}\n")


def install_perf_analyzer(root: Path, tmp: Path) -> None:
    perf = root / "perf"
    if (perf / "bin" / "perf_analyzer").is_file():
        return
    log.info("installing perf_analyzer from %s", PERF_ANALYZER_CLIENT)
    _pip(sys.executable, "download", "--no-deps", "--quiet", "--dest", str(tmp / "pa"), "--platform", "manylinux1_x86_64",
         "--only-binary=:all:", PERF_ANALYZER_CLIENT)
    _unzip(next((tmp / "pa").glob("tritonclient-*.whl")), tmp / "pa" / "wheel")
    (perf / "bin").mkdir(parents=True, exist_ok=True)
    (perf / "lib").mkdir(parents=True, exist_ok=True)
    binary = perf / "bin" / "perf_analyzer"
    shutil.copy(next((tmp / "pa" / "wheel").glob("*/data/bin/perf_analyzer")), binary)
    binary.chmod(0o755)
    # its libraries come from the server's lib directory, under the names it asks for
    for pattern, name in (("libb64-*.so.0d", "libb64.so.0d"), ("libcudart-*.so.12*", "libcudart.so.12")):
        target = next((root / "libs").glob(pattern)).resolve()
        link = perf / "lib" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


def install(root: Path | None = None) -> Path:
    root = root or triton_home()
    with tempfile.TemporaryDirectory(prefix="bubo-triton-") as tmp:
        install_server(root, Path(tmp))
        install_model_env(root)
        install_perf_analyzer(root, Path(tmp))
    return root


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"Triton, its model environment and perf_analyzer are in {install()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
