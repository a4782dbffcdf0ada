"""ONNX -> TensorRT engines (fp16, optimization profile over the batch range) and their parity check.

What a build asks TensorRT for is an `EnginePlan` per network (`engine_plan`): one optimization profile
(min / opt / max shape of every input), fp16, the workspace limit. `configure_builder` applies a plan
to a builder config, and is the only code that does; `plan_table` lists the plans of the full-size
networks without weights or a GPU (docs/tensorrt_plans.md shows it).

Building runs wherever TensorRT and a CUDA GPU exist. Elsewhere `require_tensorrt` stops with the
reason, and the tests that need it skip with that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from export.onnx_export import ParityResult, output_error, torch_outputs
from export.specs import ExportSpec

log = logging.getLogger(__name__)

TENSORRT_TOLERANCE = 1e-2  # fp16 engines vs fp32 PyTorch
# TensorRT's scratch limit for tactics. 8 GiB holds SAM ViT-H's global attention at batch 4
# (16 heads x 4096^2 fp16 scores = 512 MiB per image and block) with room; the plan is built once.
DEFAULT_WORKSPACE_GIB = 8

Shape = tuple[int, ...]


@dataclass(frozen=True)
class EnginePlan:
    """What `bubo export --backend tensorrt` asks TensorRT for, for one network."""

    name: str
    profile: dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max): one optimization profile
    fp16: bool
    workspace_gib: int
    triton_max_batch: int  # Triton's max_batch_size; 0: no batching, one request per run (batch axis 1)

    def row(self) -> dict:
        """The plan as a table row: the dynamic axes of each input as min..opt..max."""
        def axes(lo: Shape, opt: Shape, hi: Shape) -> str:
            return "x".join(str(a) if a == c else f"{a}..{b}..{c}" for a, b, c in zip(lo, opt, hi))

        return {
            "network": self.name,
            "profile": ", ".join(f"{name} {axes(*shapes)}" for name, shapes in self.profile.items()),
            "precision": "fp16" if self.fp16 else "fp32",
            "workspace": f"{self.workspace_gib} GiB",
            "triton batch": self.triton_max_batch or "none",
        }


def engine_plan(
    spec: ExportSpec,
    max_batch: int | None = None,
    opt_batch: int | None = None,
    fp16: bool = True,
    workspace_gib: int = DEFAULT_WORKSPACE_GIB,
) -> EnginePlan:
    """The plan for one network: `spec.trt_profile` where it names an input (axes beyond the batch:
    image size, tokens, boxes), else batch 1 / opt / max over the example's other axes."""
    max_batch = max_batch or max(1, spec.max_batch_size)
    opt = opt_batch or max(1, max_batch // 2)
    fixed = {}
    for name in spec.inputs:
        if spec.trt_profile and name in spec.trt_profile:
            fixed[name] = spec.trt_profile[name]
        else:
            shape = tuple(spec.example(1)[name].shape[1:])
            fixed[name] = ((1, *shape), (opt, *shape), (max_batch, *shape))
    for name, (lo, mid, hi) in fixed.items():
        if not (len(lo) == len(mid) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, mid, hi))):
            raise ValueError(f"{spec.name}: profile of {name} is not min <= opt <= max: {lo}, {mid}, {hi}")
    return EnginePlan(spec.name, fixed, fp16, workspace_gib, spec.max_batch_size)


def configure_builder(trt, builder, config, plan: EnginePlan) -> None:
    """Apply `plan` to a TensorRT builder config (`trt` is the tensorrt module, passed in so that the
    same code runs against a recording stand-in where TensorRT cannot run)."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_gib << 30)
    if plan.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in plan.profile.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)


def plan_table(preset: str = "bubogpt-7b", grounding_preset: str | None = None) -> list[EnginePlan]:
    """The plan of every TensorRT model `bubo export --backend tensorrt` writes for a preset, at its
    real sizes, with no weights and no GPU. The LLM is not among them: vLLM serves it."""
    return [engine_plan(spec) for spec in full_size_specs(preset, grounding_preset)]


def full_size_specs(preset: str = "bubogpt-7b", grounding_preset: str | None = None) -> list[ExportSpec]:
    """The export specs of a preset and its grounding networks, built on the meta device.

    The plans need the configs only. The detector's example caption needs a tokenizer: a stand-in
    WordPiece vocabulary is written to a temporary directory (the detector's profile covers every
    caption up to max_text_len tokens, whatever the vocabulary).
    """
    import tempfile
    from types import SimpleNamespace

    import torch

    from bubogpt.config import get_preset
    from bubogpt.grounding import grounding_dino as gdino
    from bubogpt.grounding import ram, sam
    from bubogpt.grounding.grounding_dino.preprocessing import load_tokenizer
    from bubogpt.grounding.pipeline import GROUNDING_PRESET_OF, GROUNDING_PRESETS, write_text_encoder_dir
    from bubogpt.model import BuboGPT
    from export.specs import grounding_specs, modality_specs

    cfg = get_preset(preset)
    gcfg = GROUNDING_PRESETS[grounding_preset or GROUNDING_PRESET_OF[preset]]
    dcfg = gdino.GDINO_PRESETS[gcfg.detector]
    scfg = sam.SAM_PRESETS[gcfg.segmenter]
    with torch.device("meta"):
        model = BuboGPT(cfg)
        pipeline = SimpleNamespace(
            tagger=ram.RamTagger(ram.RAM_PRESETS[gcfg.tagger]), detector=gdino.GroundingDino(dcfg),
            segmenter_encoder=sam.SamImageEncoder(scfg), segmenter_decoder=sam.SamPromptDecoder(scfg),
            tag_list=list(ram.TINY_TAG_LIST),
        )
    with tempfile.TemporaryDirectory() as tmp:
        t = dcfg.text
        text_dir = write_text_encoder_dir(Path(tmp), list(ram.TINY_TAG_LIST), t.vocab_size, t.hidden, t.num_layers,
                                          t.num_heads, t.intermediate, t.max_positions)
        pipeline.tokenizer = load_tokenizer(text_dir)  # read into memory: outlives the directory
        return modality_specs(model) + grounding_specs(pipeline)


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
    workspace_gib: int = DEFAULT_WORKSPACE_GIB,
) -> Path:
    import tensorrt as trt

    plan = engine_plan(spec, max_batch, opt_batch, fp16, workspace_gib)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode in TensorRT 10)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX file: {errors}")
    config = builder.create_builder_config()
    configure_builder(trt, builder, config, plan)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see its log above)")
    plan_path.write_bytes(bytes(serialized))
    log.info("built %s (%s)", plan_path, plan.row())
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
    error = output_error(spec, expected, [got[name] for name in spec.outputs])
    return ParityResult(spec.name, "tensorrt", batch, error, tolerance)
