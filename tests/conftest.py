import grpc
import pytest

from async_runner import LoopThread
from bubogpt.samples import make_audio_bytes, make_image_bytes

__all__ = ["make_audio_bytes", "make_image_bytes"]


@pytest.fixture(scope="session")
def image_bytes() -> bytes:
    return make_image_bytes()


@pytest.fixture(scope="session")
def audio_bytes() -> bytes:
    return make_audio_bytes()


# The whole stack on loopback (real Triton, vLLM engine and gRPC frontend), once per test module that asks.


@pytest.fixture(scope="module")
def loop():
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def serve_cache(tmp_path_factory):
    """One cache directory for the stacks of the whole session: the default model is exported to a Triton
    repository once per configuration, not once per test module (tests that change a repository make their own)."""
    return tmp_path_factory.mktemp("serve-cache")


@pytest.fixture(scope="module")
def stack(loop, serve_cache):
    from serving.app import ServeOptions, Stack, free_port

    options = ServeOptions(port=0, metrics_port=free_port(), cache_dir=serve_cache)
    stack = loop.run(Stack(options).start(), timeout=900)
    yield stack
    loop.run(stack.stop(grace_s=5), timeout=120)


@pytest.fixture(scope="module")
def stub(stack):
    from serving.proto import bubo_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}", options=[("grpc.max_send_message_length", 64 << 20)])
    yield bubo_pb2_grpc.BuboStub(channel)
    channel.close()
