"""The export's handling of full-size graphs: external data gathered into one file, and the weights of
exported networks released (benchmarks/full_size.py runs both at the bubogpt-7b sizes)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import onnxruntime as ort
import torch
from torch import nn

from bubogpt.defaults import default_model_dir
from bubogpt.weights import load_model
from export.onnx_export import check_onnx, export_onnx, gather_external_data, onnx_files
from export.repository import RepositorySettings, network_onnx, network_settings, write_repository
from export.specs import ExportSpec


def _spec() -> ExportSpec:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 32)).eval()
    return ExportSpec(name="mlp", module=module, inputs={"X": lambda b: torch.randn(b, 64)}, outputs=["Y"])


def test_per_tensor_external_files_are_gathered_into_one(tmp_path):
    """torch writes one file per tensor beside a graph over 2 GiB; the repository gets model.onnx and
    model.onnx.data, and ONNX Runtime reads them to the same outputs as PyTorch."""
    spec = _spec()
    small = export_onnx(spec, tmp_path / "small" / "model.onnx")
    assert onnx_files(small) == [small]  # under 2 GiB: self-contained
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    onnx.save_model(onnx.load(str(small)), str(scratch / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(scratch.iterdir())) > 3  # what torch's exporter leaves for a large graph
    target = tmp_path / "repo" / "1" / "model.onnx"
    target.parent.mkdir(parents=True)
    gather_external_data(scratch / "model.onnx", target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert onnx_files(target) == [target, target.with_name("model.onnx.data")]
    x = torch.randn(5, 64)
    got = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(["Y"], {"X": x.numpy()})[0]
    with torch.no_grad():
        want = spec.module(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert check_onnx(spec, target).ok


def test_release_frees_each_exported_network(tmp_path):
    """`bubo export` (export_model_dir) releases each network's weights once its parity check passed,
    and the repository it writes is the one written without releasing."""
    kept, released = load_model(default_model_dir()), load_model(default_model_dir())
    settings = RepositorySettings()
    write_repository(tmp_path / "kept", kept, settings=settings)
    write_repository(tmp_path / "released", released, settings=settings, release=True)
    assert all(p.device.type == "meta" for p in released.parameters())
    assert all(p.device.type == "cpu" for p in kept.parameters())
    for name in ("vision_encoder", "vision_qformer", "audio_encoder", "audio_qformer"):
        a = onnx.load(str(network_onnx(tmp_path / "kept", name)))
        b = onnx.load(str(network_onnx(tmp_path / "released", name)))
        assert [onnx.numpy_helper.to_array(t).tobytes() for t in a.graph.initializer] == \
               [onnx.numpy_helper.to_array(t).tobytes() for t in b.graph.initializer], name
    for config in (tmp_path / "kept").glob("*/config.pbtxt"):
        assert (tmp_path / "released" / config.relative_to(tmp_path / "kept")).read_text() == config.read_text()
    # a CPU repository: one python model per modality holds its encoder and Q-Former, and no other model exists
    assert sorted(p.name for p in (tmp_path / "kept").iterdir() if p.is_dir()) == ["audio_embed", "image_embed"]
    assert network_onnx(tmp_path / "kept", "vision_qformer") == tmp_path / "kept" / "image_embed" / "1" / "vision_qformer" / "model.onnx"
    # every ONNX Runtime session gets the thread settings: a pool per core whose threads do not spin when idle
    for network, modality in (("vision_encoder", "image"), ("audio_qformer", "audio")):
        settings = network_settings(tmp_path / "kept", network)  # the fused model's
        assert (settings["modality"], settings["intra_op_threads"], settings["allow_spinning"]) == (modality, 0, False)


def test_ensemble_layout_keeps_a_model_per_network(tmp_path):
    """What GPU repositories are (here with ONNX files): preprocess -> encoder -> Q-Former as an ensemble,
    each network its own ONNX Runtime model with the thread settings."""
    write_repository(tmp_path / "repo", load_model(default_model_dir()), settings=RepositorySettings(fused_embeds=False))
    models = {p.name for p in (tmp_path / "repo").iterdir() if p.is_dir()}
    assert models == {"image_preprocess", "audio_preprocess", "vision_encoder", "vision_qformer", "audio_encoder",
                      "audio_qformer", "image_embed", "audio_embed"}
    assert 'platform: "ensemble"' in (tmp_path / "repo" / "image_embed" / "config.pbtxt").read_text()
    for name in ("vision_encoder", "vision_qformer", "audio_encoder", "audio_qformer"):
        assert network_onnx(tmp_path / "repo", name) == tmp_path / "repo" / name / "1" / "model.onnx"
        assert network_settings(tmp_path / "repo", name) == {"intra_op_threads": 0, "allow_spinning": False}
    with pytest.raises(ValueError, match="fused embedding models run ONNX Runtime"):
        write_repository(tmp_path / "trt", load_model(default_model_dir()), backend="tensorrt", settings=RepositorySettings(fused_embeds=True))


def test_export_refuses_a_negative_thread_count(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bubo_cli", "export", "--onnx-threads", "-1", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["bubo export: --onnx-threads: -1: use 0 (one per core) or more"]


@pytest.mark.parametrize("args, message", [
    (["--backend", "tensorrt", "--layout", "fused"], "--layout fused: TensorRT repositories keep one Triton model per network (use --layout ensemble)"),
    (["--update", "--layout", "ensemble"], "--layout ensemble: an update keeps the repository's own layout; leave --layout out"),
])
def test_export_refuses_a_layout_it_cannot_write(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "bubo_cli", "export", *args, "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"bubo export: {message}"]


def _detections(queries: int = 900, classes: int = 16, batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, queries, classes)).astype(np.float32),
            rng.uniform(0.05, 0.95, size=(batch, queries, 4)).astype(np.float32)]


def test_matched_query_error_pairs_queries_by_box():
    """The detector's parity: a reordering of the top-k queries is no error, a few queries swapped in or
    out are left unpaired, a difference on the paired ones is measured exactly, and too few pairs fail."""
    from export.onnx_export import MIN_MATCHED, matched_query_error, relative_error

    expected = _detections()
    assert matched_query_error(expected, expected) == 0.0
    order = np.random.default_rng(1).permutation(900)
    shuffled = [expected[0][:, order], expected[1][:, order]]
    assert matched_query_error(expected, shuffled) == 0.0
    assert relative_error(expected[0], shuffled[0]) > 0.5  # what the in-order comparison said

    swapped = [a.copy() for a in shuffled]
    few = int(900 * (1 - MIN_MATCHED)) - 1  # under 1 %: proposals that left the top-k on a near-tie
    swapped[1][:, :few] = 2.0 + np.arange(few)[None, :, None]  # boxes no expected query is near
    swapped[0][:, :few] = 100.0  # their logits must not count
    assert matched_query_error(expected, swapped) == 0.0

    nudged = [a.copy() for a in shuffled]
    nudged[0][1, 5, 3] += 0.25  # one logit of one paired query, in the second image
    scale = np.abs(expected[0][1]).max()
    assert np.isclose(matched_query_error(expected, nudged), 0.25 / scale, rtol=1e-5)

    many = [a.copy() for a in shuffled]
    many[1][0, :few + 3] = 5.0 + np.arange(few + 3)[:, None]  # over 1 % unpaired in the first image
    assert matched_query_error(expected, many) == float("inf")

    twins = [expected[0], expected[1].copy()]
    twins[1][0, 1] = twins[1][0, 0]  # two queries on one box pair with two, not both with one
    twins[0][0, 1] = twins[0][0, 0] + 1.0
    assert matched_query_error(twins, [twins[0][:, ::-1], twins[1][:, ::-1]]) == 0.0
    assert matched_query_error(expected, [expected[0][:, :899], expected[1][:, :899]]) == float("inf")
