"""The export's handling of full-size graphs: external data gathered into one file, and the weights of
exported networks released (benchmarks/full_size.py runs both at the bubogpt-7b sizes)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bubogpt.defaults import default_model_dir
from bubogpt.weights import load_model
from export.onnx_export import check_onnx, export_onnx, gather_external_data, onnx_files
from export.repository import RepositorySettings, write_repository
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
        a = onnx.load(str(tmp_path / "kept" / name / "1" / "model.onnx"))
        b = onnx.load(str(tmp_path / "released" / name / "1" / "model.onnx"))
        assert [onnx.numpy_helper.to_array(t).tobytes() for t in a.graph.initializer] == \
               [onnx.numpy_helper.to_array(t).tobytes() for t in b.graph.initializer], name
    for config in (tmp_path / "kept").glob("*/config.pbtxt"):
        assert (tmp_path / "released" / config.relative_to(tmp_path / "kept")).read_text() == config.read_text()
