"""ONNX Runtime sessions built one way: every served ONNX model (model_repository/onnx_runtime and
fused_embed) and the in-process benchmarks that time what they run. Imports nothing heavy (the
onnx_runtime stubs do not load torch)."""

from __future__ import annotations

from pathlib import Path


def ort_session(path: str | Path, intra_op_threads: int = 0, allow_spinning: bool = False, gpu: bool = False):
    """An ONNX Runtime session as the served models run it. `intra_op_threads` 0 is a pool of one
    thread per core. Idle pool threads sleep unless `allow_spinning`: on a few cores shared by many
    Triton stubs and vLLM, a spinning pool takes the CPU that the next request's work needs
    (benchmarks/README.md, "ONNX Runtime pools that sleep when idle")."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(intra_op_threads)
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)
