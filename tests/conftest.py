import contextlib

import grpc
import pytest

from async_runner import LoopThread
from bubogpt.samples import make_audio_bytes, make_image_bytes

__all__ = ["make_audio_bytes", "make_image_bytes"]

# Modules that start real parts (Triton, the vLLM engine, the gRPC frontend, `bubo serve`): marked
# `stack`; every other test is `unit` (`pytest -m unit` is the quick inner loop).
STACK_MODULES = {"test_server", "test_served_meaning", "test_reliability", "test_reexport", "test_benchmarks",
                 "test_llm_engine", "test_vllm_mm_route", "test_triton", "test_http_api", "test_web",
                 "test_split_topology"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.stack if item.module.__name__ in STACK_MODULES else pytest.mark.unit)


# the media cases every engine test runs (fixed seeds)
MEDIA_CASES = {
    "image": dict(image=make_image_bytes(seed=1)),
    "audio": dict(audio=make_audio_bytes(seed=2)),
    "image+audio": dict(image=make_image_bytes(seed=3), audio=make_audio_bytes(seed=4)),
    "text": dict(),
}


@pytest.fixture(scope="session")
def reference():
    """The plain PyTorch pipeline of the built-in model: the oracle served answers are compared with."""
    from bubogpt.reference import ReferencePipeline

    return ReferencePipeline.from_dir()


def reference_answer(reference, turns, image_embeds=None, audio_embeds=None, max_new_tokens: int = 24):
    """The reference's greedy answer for `turns` with the given modality rows."""
    return reference.generate_from_embeds(reference.prompt_embeds(turns, image_embeds, audio_embeds), max_new_tokens=max_new_tokens)


@pytest.fixture(scope="session")
def image_bytes() -> bytes:
    return make_image_bytes()


@pytest.fixture(scope="session")
def audio_bytes() -> bytes:
    return make_audio_bytes()


# The whole stack on loopback (real Triton, vLLM engine, gRPC and HTTP frontends), once per session.


@pytest.fixture(scope="session")
def loop():
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def serve_cache(tmp_path_factory):
    """One cache directory for the stacks of the whole session: the default model is exported to a Triton
    repository once per configuration, not once per test module (tests that change a repository make their own)."""
    return tmp_path_factory.mktemp("serve-cache")


@pytest.fixture(scope="session")
def stack(loop, serve_cache):
    """One stack for every module that asks (gRPC on a free port, HTTP too); stopped at the end of the session."""
    from serving.app import ServeOptions, Stack, free_port

    options = ServeOptions(port=0, metrics_port=free_port(), http_port=free_port(), cache_dir=serve_cache)
    stack = loop.run(Stack(options).start(), timeout=900)
    yield stack
    loop.run(stack.stop(grace_s=5), timeout=120)


@contextlib.contextmanager
def part_down(loop, stack, name: str):
    """The stack's part `name` reported down, with its supervisor paused (it would see the part healthy and
    mark it up again), for tests of what requests get while a part is down."""
    part = stack.parts[name]
    loop.run(stack.supervisor.stop())
    part.mark_down("taken down by a test")
    try:
        yield part
    finally:
        part.mark_up()
        loop.run(_start_supervisor(stack))


async def _start_supervisor(stack):
    stack.supervisor.start()


@pytest.fixture(scope="session")
def stub(stack):
    from serving.proto import bubo_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}", options=[("grpc.max_send_message_length", 64 << 20)])
    yield bubo_pb2_grpc.BuboStub(channel)
    channel.close()


@pytest.fixture(scope="session")
def installed_copy(tmp_path_factory):
    """The project as `pip install .` puts it: its wheel, unpacked into a directory of its own. Run with
    `env` (that directory first on PYTHONPATH) and `cwd` (outside the source tree), code imports the
    installed copy: package data included, nothing read from the source tree."""
    import os
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    import shutil

    root = Path(__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("installed")
    # built from a copy: setuptools writes build/ and *.egg-info/ into the tree it builds
    source = out / "source"
    shutil.copytree(root, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                ".pytest_cache", ".hypothesis", "runs", "out", "results"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out / "wheel"), str(source)],
                   check=True, timeout=600)
    (wheel,) = (out / "wheel").glob("bubogpt_serving-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(out / "site")
    env = dict(os.environ, PYTHONPATH=str(out / "site"))
    cwd = out / "elsewhere"
    cwd.mkdir()
    return {"site": out / "site", "env": env, "cwd": cwd}
