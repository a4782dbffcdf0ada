"""ONNX -> TensorRT engines (fp16, optimization profile over the batch range) and their parity check.

Runs wherever TensorRT and a CUDA GPU exist. Elsewhere `require_tensorrt` stops with the reason, and
the tests that need it skip with that reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from export.onnx_export import ParityResult, relative_error, torch_outputs
from export.specs import ExportSpec

log = logging.getLogger(__name__)

TENSORRT_TOLERANCE = 1e-2  # fp16 engines vs fp32 PyTorch


class TensorRTUnavailable(RuntimeError):
    pass


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built and run here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install '.[gpu]' on a machine with an NVIDIA GPU)"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def require_tensorrt() -> None:
    reason = tensorrt_unavailable_reason()
    if reason:
        raise TensorRTUnavailable(f"cannot build TensorRT engines on this machine: {reason}")


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    spec: ExportSpec,
    max_batch: int,
    opt_batch: int | None = None,
    fp16: bool = True,
    workspace_gib: int = 8,
) -> Path:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode in TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX file: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    opt = opt_batch or max(1, max_batch // 2)
    for name, make in spec.inputs.items():
        shape = tuple(make(1).shape[1:])
        profile.set_shape(name, (1, *shape), (opt, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    plan_path.write_bytes(bytes(serialized))
    log.info("built %s (batch 1..%d, opt %d, fp16=%s)", plan_path, max_batch, opt, fp16)
    return plan_path


class EngineRunner:
    """Runs a serialized engine on CUDA tensors (torch owns the memory)."""

    def __init__(self, plan_path: Path):
        import tensorrt as trt
        import torch

        self.torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in self.names if n not in self.input_names]

    def __call__(self, inputs: dict) -> dict:
        torch = self.torch
        stream = torch.cuda.current_stream()
        device_inputs = {k: v.cuda().contiguous() for k, v in inputs.items()}
        for name, tensor in device_inputs.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {k: v.cpu() for k, v in outputs.items()}


def check_engine(spec: ExportSpec, plan_path: Path, batch: int = 3, tolerance: float = TENSORRT_TOLERANCE) -> ParityResult:
    inputs = spec.example(batch, seed=1)
    expected = torch_outputs(spec, inputs)
    got = EngineRunner(plan_path)(inputs)
    error = max(relative_error(e, np.asarray(got[name])) for name, e in zip(spec.outputs, expected))
    return ParityResult(spec.name, "tensorrt", batch, error, tolerance)
