"""The exported nano model served by the real Triton server on loopback."""

import concurrent.futures
import os
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from benchmarks.perf_analyzer import run_perf_analyzer
from bubogpt.defaults import default_model_dir
from bubogpt.grounding.pipeline import load_grounding
from bubogpt.reference import ReferencePipeline
from bubogpt.weights import load_model
from conftest import make_audio_bytes, make_image_bytes
from export.onnx_export import ParityError
from export.repository import RepositorySettings, write_repository
from export.triton_install import model_env_dir
from serving.app import free_port
from serving.triton import TritonCrashed, TritonPorts, TritonServer


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    settings = RepositorySettings(execution_env=str(model_env_dir()))
    grounding = load_grounding(default_model_dir())
    results = write_repository(out, load_model(default_model_dir()), settings=settings, grounding=grounding)
    assert all(r.ok for r in results)
    assert {r.name for r in results} >= {"tagger", "detector", "sam_image_encoder", "sam_prompt_decoder"}
    return out


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    triton = TritonServer(repository, TritonPorts(http, grpc, metrics), log_path=tmp_path_factory.mktemp("log") / "triton.log")
    triton.start(timeout=240)
    yield triton
    triton.stop()
    assert triton.process is None


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server.url_grpc)


@pytest.fixture(scope="module")
def reference():
    return ReferencePipeline.from_dir()


def infer_bytes(client, model, input_name, payload: bytes) -> np.ndarray:
    tensor = grpcclient.InferInput(input_name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[payload]], dtype=object))
    return client.infer(model, [tensor]).as_numpy("EMBEDS")[0]


def relative_error(expected, got) -> float:
    return float(np.abs(expected - got).max() / np.abs(expected).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_image_embed_equals_the_pytorch_reference(client, reference, seed):
    image = make_image_bytes(300 + 40 * seed, 200, fmt="JPEG", seed=seed)
    got = infer_bytes(client, "image_embed", "IMAGE", image)
    assert got.shape == (32, 128)
    assert relative_error(reference.embed_image(image).numpy(), got) < 1e-4


@pytest.mark.parametrize("seconds", [2.0, 11.0])
def test_audio_embed_equals_the_pytorch_reference(client, reference, seconds):
    audio = make_audio_bytes(seconds=seconds, sample_rate=22050, seed=3)
    got = infer_bytes(client, "audio_embed", "AUDIO", audio)
    assert relative_error(reference.embed_audio(audio).numpy(), got) < 1e-4


def test_concurrent_requests_are_batched(client, reference):
    images = [make_image_bytes(seed=10 + i) for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda img: infer_bytes(client, "image_embed", "IMAGE", img), images))
    for image, got in zip(images, results):
        assert relative_error(reference.embed_image(image).numpy(), got) < 1e-4
    stats = client.get_inference_statistics("image_embed", as_json=True)  # the fused model batches (CPU layout)
    batch_sizes = [int(b["batch_size"]) for b in stats["model_stats"][0]["batch_stats"]]
    assert max(batch_sizes) > 1, batch_sizes


def test_a_bad_request_in_a_batch_leaves_the_others_right(client, reference):
    """The fused model decodes a batch's requests one by one: the corrupt ones get their error, the rest
    their embeddings, whatever their order in the batch."""
    images = [make_image_bytes(seed=40 + i) if i % 3 else b"not an image %d" % i for i in range(18)]
    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(infer_bytes, client, "image_embed", "IMAGE", image) for image in images]
    for image, future in zip(images, futures):
        if image.startswith(b"not an image"):
            with pytest.raises(InferenceServerException, match="IMAGE: image could not be decoded"):
                future.result()
        else:
            assert relative_error(reference.embed_image(image).numpy(), future.result()) < 1e-4


def test_the_ensemble_layout_serves_the_same_embeddings(tmp_path, reference):
    """The layout GPU repositories keep (preprocess -> encoder -> Q-Former, a Triton model each), here
    with ONNX files on CPU: served, it answers what the fused layout and PyTorch answer."""
    repo = tmp_path / "repo"
    write_repository(repo, load_model(default_model_dir()), settings=RepositorySettings(execution_env=str(model_env_dir()), fused_embeds=False))
    with TritonServer(repo, TritonPorts(*free_ports(3)), log_path=tmp_path / "triton.log").start(timeout=240) as triton:
        client = grpcclient.InferenceServerClient(triton.url_grpc)
        image, audio = make_image_bytes(seed=7), make_audio_bytes(seconds=3.0, seed=4)
        assert relative_error(reference.embed_image(image).numpy(), infer_bytes(client, "image_embed", "IMAGE", image)) < 1e-4
        assert relative_error(reference.embed_audio(audio).numpy(), infer_bytes(client, "audio_embed", "AUDIO", audio)) < 1e-4
        assert int(client.get_inference_statistics("vision_encoder", as_json=True)["model_stats"][0]["inference_count"]) == 1
        with pytest.raises(InferenceServerException, match="IMAGE: image could not be decoded"):
            infer_bytes(client, "image_embed", "IMAGE", b"not an image")


@pytest.mark.parametrize(
    "model, input_name, payload, message",
    [
        ("image_embed", "IMAGE", b"definitely not an image", "IMAGE: image could not be decoded: not a recognised image format"),
        ("image_embed", "IMAGE", make_image_bytes(fmt="PNG")[:300], "IMAGE: image could not be decoded"),
        ("image_embed", "IMAGE", b"", "IMAGE: image is empty"),
        ("audio_embed", "AUDIO", b"RIFF....WAVEfmt garbage", "AUDIO:"),
        ("audio_embed", "AUDIO", b"", "AUDIO:"),
    ],
)
def test_corrupt_payloads_get_errors_and_the_server_keeps_serving(client, reference, model, input_name, payload, message):
    with pytest.raises(InferenceServerException, match=message) as info:
        infer_bytes(client, model, input_name, payload)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"  # the client's fault, said so to tritonclient users too
    assert client.is_server_ready()
    image = make_image_bytes(seed=99)
    assert relative_error(reference.embed_image(image).numpy(), infer_bytes(client, "image_embed", "IMAGE", image)) < 1e-4


def test_perf_analyzer_runs_against_image_embed(server):
    rows = run_perf_analyzer(
        "image_embed", server.url_grpc, "IMAGE", [make_image_bytes(seed=5)], concurrency="2",
        measurement_ms=1000, stability=50, max_trials=10,
    )
    assert len(rows) == 1 and rows[0]["concurrency"] == 2 and rows[0]["throughput"] > 0


def test_failed_parity_refuses_to_write(tmp_path, monkeypatch):
    import export.repository as repository_module
    from export.onnx_export import ParityResult

    monkeypatch.setattr(repository_module, "check_onnx", lambda spec, path: ParityResult(spec.name, "onnx", 3, 1.0, 1e-4))
    with pytest.raises(ParityError, match="parity check failed"):
        write_repository(tmp_path / "repo", load_model(default_model_dir()))
    assert not (tmp_path / "repo").exists()
    assert not any(tmp_path.iterdir())


def test_tensorrt_backend_needs_a_gpu(tmp_path):
    from export.tensorrt_build import TensorRTUnavailable, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the GPU benchmark script exercises this path")
    with pytest.raises(TensorRTUnavailable, match="cannot build TensorRT engines"):
        write_repository(tmp_path / "repo", load_model(default_model_dir()), backend="tensorrt")


@pytest.fixture(scope="module")
def grounding_reference():
    return load_grounding(default_model_dir())


@pytest.mark.parametrize("size, seed", [((320, 240), 0), ((240, 400), 1), ((500, 180), 2)])
def test_grounding_ensemble_equals_the_pytorch_pipeline(server, grounding_reference, size, seed):
    import asyncio
    import io

    from PIL import Image

    from serving.grounding_client import TritonGrounder
    from serving.triton_client import TritonClient

    from training.world.scene import make_scene

    data = make_scene(seed, size=size).png()  # the world the default's grounding nets know

    async def ground():
        triton = TritonClient(server.url_grpc)
        try:
            return await TritonGrounder(triton).ground(data)
        finally:
            await triton.close()

    served = asyncio.run(ground())
    reference = grounding_reference(Image.open(io.BytesIO(data)).convert("RGB"))
    assert served.tags == reference.tags
    assert [e.label for e in served.entities] == [e.label for e in reference.entities]
    assert served.entities, "the default grounding models find something"
    for got, want in zip(served.entities, reference.entities):
        assert np.allclose(got.box_xyxy, want.box_xyxy, atol=1e-2)
        assert abs(got.score - want.score) < 1e-4
        a, b = got.mask_array(), want.mask_array()
        assert a.shape == b.shape == (size[1], size[0])
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.999  # logits near 0 may flip a pixel or two


def test_grounding_rejects_a_corrupt_image(client):
    tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"not an image"]], dtype=object))
    with pytest.raises(InferenceServerException, match="IMAGE: image could not be decoded") as info:
        client.infer("grounding", [tensor])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_ready()


# A stand-in for tritonserver, found first on PATH: Triton's intermittent start-up abort (the python
# backend's lock_exception, server#8882) cannot be caused on demand. It counts its starts, keeps the
# shared-memory prefix it was given, then aborts, exits 1, is SIGKILLed (from outside, as far as
# TritonServer can tell), or answers /v2/health/ready.
FAKE_TRITONSERVER = """#!{python}
import http.server, os, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
with open(os.environ["FAKE_TRITON_STARTS"], "a") as starts:
    starts.write(args["backend-config"] + "\\n")
n = len(Path(os.environ["FAKE_TRITON_STARTS"]).read_text().splitlines())
mode = os.environ["FAKE_TRITON_MODE"]
if mode == "crash" or (mode == "crash-once" and n == 1):
    os.abort()
if mode == "exit":
    sys.exit(1)
if mode == "killed":
    os.kill(os.getpid(), 9)
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(args["http-port"])), Ready).serve_forever()
"""


@pytest.mark.parametrize("mode, starts, raises", [("crash-once", 2, None), ("crash", 3, TritonCrashed),
                                                  ("exit", 1, RuntimeError), ("killed", 1, RuntimeError)])
def test_start_retries_a_triton_that_crashed_but_not_one_that_failed(tmp_path, monkeypatch, mode, starts, raises):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "tritonserver"
    fake.write_text(FAKE_TRITONSERVER.format(python=sys.executable))
    fake.chmod(0o755)
    record = tmp_path / "starts"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TRITON_STARTS", str(record))
    monkeypatch.setenv("FAKE_TRITON_MODE", mode)
    (tmp_path / "repo").mkdir()
    triton = TritonServer(tmp_path / "repo", TritonPorts(*free_ports(3)), log_path=tmp_path / "triton.log")
    if raises is None:
        with triton.start(timeout=60) as entered:  # entering a started server starts no second one
            assert entered is triton and triton.is_ready()
    else:
        with pytest.raises(raises) as caught:
            triton.start(timeout=60)
        assert type(caught.value) is raises  # an exit code or a kill is not reported as a crash
    assert triton.process is None
    prefixes = record.read_text().splitlines()
    assert len(prefixes) == starts
    assert len(set(prefixes)) == starts  # each start gets fresh shared-memory regions
