"""GPU benchmark of the real-size networks (random weights): one prepared command for a GPU machine.

    python -m benchmarks.gpu_bench                      # everything, batch 1/8/32, writes benchmarks/results/gpu-<ts>/
    python -m benchmarks.gpu_bench --budget-s 420 --models vision_encoder,sam_vit_h   # a short device session

Networks (bubogpt-7b sizes, fp16, random weights: speed does not depend on the values):
  vision_encoder   EVA-ViT-g (+ ln_vision), 224 px                     BuboGPT(get_preset("bubogpt-7b"))
  vision_qformer   BLIP-2 Q-Former + projection to 4096                  idem
  audio_encoder    ImageBind-huge audio trunk, 7 fbank clips            idem
  audio_qformer    audio Q-Former + projection                          idem
  sam_vit_h        SAM ViT-H image encoder, 1024 px                     bubogpt.grounding.sam
  grounding_dino   Grounding DINO Swin-T (800 x 1066 image, 32 tokens)  bubogpt.grounding (skipped if absent)
  ram_swin_l       RAM Swin-L tagger, 384 px                            bubogpt.grounding.ram (skipped if absent)

Runtime: the fastest present. TensorRT (fp16 engines built through export/tensorrt_build.py with a
batch profile up to the largest batch) when `tensorrt` imports and a GPU is visible; otherwise, or
when an engine build fails (the reason is recorded), PyTorch CUDA fp16 with the forward captured
in a CUDA graph per batch size (`--torch-mode cudagraph`, default; `compile` uses torch.compile
mode "max-autotune", `eager` neither). Timing: warm-up iterations, then CUDA-event timing of each
iteration (inputs already on the GPU, outputs stay there); items/s = batch / mean time.

Stops at once with a clear message on a machine without CUDA. `--smoke` runs the same code on the
CPU with the tiny presets (what tests/test_benchmarks.py does); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ALL_MODELS = ("vision_encoder", "vision_qformer", "audio_encoder", "audio_qformer", "sam_vit_h", "grounding_dino", "ram_swin_l")


class NoCuda(SystemExit):
    pass


def require_cuda(torch) -> None:
    if not torch.cuda.is_available():
        raise NoCuda(
            "gpu_bench needs an NVIDIA GPU with CUDA: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run it on a GPU machine with the "
            "CUDA build of torch (pip install '.[gpu]'), or pass --smoke to check the code path on the CPU."
        )


@dataclass
class Bench:
    name: str
    module: object  # torch.nn.Module
    make_inputs: Callable[[int], dict]  # batch -> {name: tensor} on the device, fp16 where floating
    note: str = ""


@dataclass
class Result:
    model: str
    batch: int
    runtime: str
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    items_per_s: float | None = None
    peak_memory_bytes: int | None = None
    iterations: int = 0
    error: str = ""


@dataclass
class Options:
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    warmup: int = 5
    iterations: int = 20
    runtime: str = "auto"  # auto | tensorrt | torch
    torch_mode: str = "cudagraph"  # cudagraph | compile | eager
    models: tuple[str, ...] = ALL_MODELS
    smoke: bool = False
    budget_s: float = 0.0  # 0 = no limit
    workdir: Path | None = None


# --------------------------------------------------------------------------------------------------
# the networks
# --------------------------------------------------------------------------------------------------


def build_benches(torch, options: Options, device, dtype, notes: list[str]) -> list[Bench]:
    """Lazily builds each requested network on `device`; anything that cannot be built is skipped with a note."""
    from bubogpt.config import get_preset

    benches: list[Bench] = []
    wanted = set(options.models)
    preset = "nano" if options.smoke else "bubogpt-7b"

    def floating(make):
        return lambda b: {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in make(b).items()}

    if wanted & {"vision_encoder", "vision_qformer", "audio_encoder", "audio_qformer"}:
        from bubogpt.model import BuboGPT
        from export.specs import modality_specs

        with torch.device(device):
            model = BuboGPT(get_preset(preset))
        model = model.to(dtype).eval()
        for spec in modality_specs(model):
            if spec.name in wanted:
                inputs = spec.inputs
                benches.append(Bench(spec.name, spec.module.eval(),
                                     floating(lambda b, inputs=inputs: {k: make(b) for k, make in inputs.items()})))

    def optional(name: str, build: Callable[[], Bench]) -> None:
        if name not in wanted:
            return
        try:
            benches.append(build())
        except Exception as exc:  # noqa: BLE001 - a model another engineer is still writing: skip, say why
            notes.append(f"{name}: skipped ({type(exc).__name__}: {exc})")

    def sam() -> Bench:
        from bubogpt.grounding.sam import SAM_PRESETS, SamImageEncoder

        cfg = SAM_PRESETS["tiny" if options.smoke else "vit_h"]
        with torch.device(device):
            module = SamImageEncoder(cfg)
        size = cfg.img_size
        return Bench("sam_vit_h", module.to(dtype).eval(), floating(lambda b: {"pixels": torch.randn(b, 3, size, size)}),
                     note=f"SamImageEncoder({cfg.name}), {size} px")

    def grounding_dino() -> Bench:
        from bubogpt.grounding.grounding_dino import build_grounding_dino, resized_size

        preset_name = "tiny" if options.smoke else "swint_ogc"
        with torch.device(device):
            module = build_grounding_dino(preset_name)
        cfg = module.config
        height, width = resized_size(640, 480, cfg.image_size, cfg.max_image_size)  # a 4:3 picture
        tokens = min(32, cfg.max_text_len)
        vocab = cfg.text.vocab_size

        def make(b):
            return {
                "pixels": torch.randn(b, 3, height, width),
                "input_ids": torch.randint(1, vocab, (b, tokens)),
                "attention_mask": torch.ones(b, tokens, dtype=torch.long),
                "token_type_ids": torch.zeros(b, tokens, dtype=torch.long),
                "text_self_attention_masks": torch.ones(b, tokens, tokens, dtype=torch.bool),
                "position_ids": torch.arange(tokens).expand(b, tokens).contiguous(),
            }

        return Bench("grounding_dino", module.to(dtype).eval(), floating(make),
                     note=f"GroundingDino({preset_name}), {height}x{width} image, {tokens} text tokens")

    def ram() -> Bench:
        from bubogpt.grounding.ram import RAM_PRESETS, RamTagger

        cfg = RAM_PRESETS["tiny" if options.smoke else "swin_l_384"]
        with torch.device(device):
            module = RamTagger(cfg)
        size = cfg.image_size
        return Bench("ram_swin_l", module.to(dtype).eval(), floating(lambda b: {"pixels": torch.randn(b, 3, size, size)}),
                     note=f"RamTagger({'tiny' if options.smoke else 'swin_l_384'}), {size} px")

    optional("sam_vit_h", sam)
    optional("grounding_dino", grounding_dino)
    optional("ram_swin_l", ram)
    order = {name: i for i, name in enumerate(ALL_MODELS)}
    return sorted(benches, key=lambda b: order[b.name])


# --------------------------------------------------------------------------------------------------
# runtimes
# --------------------------------------------------------------------------------------------------


class Timer:
    """CUDA events on a GPU, perf_counter on the CPU (smoke runs)."""

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda = torch, cuda

    def time(self, fn: Callable[[], object], warmup: int, iterations: int) -> list[float]:
        torch = self.torch
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
            pairs = []
            for _ in range(iterations):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                pairs.append((start, end))
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in pairs]
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def torch_runner(torch, bench: Bench, batch: int, mode: str, cuda: bool) -> tuple[Callable[[], object], str]:
    """A zero-argument callable running the forward at `batch`, and the runtime's name."""
    inputs = bench.make_inputs(batch)
    args = list(inputs.values())
    module = bench.module
    if mode == "compile":
        compiled = torch.compile(module, mode="max-autotune", dynamic=False)

        def run():
            with torch.inference_mode():
                return compiled(*args)

        return run, "torch.compile(max-autotune)"

    def eager():
        with torch.inference_mode():
            return module(*args)

    if mode != "cudagraph" or not cuda:
        return eager, "pytorch eager" + (" (cpu)" if not cuda else "")
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream before capture (cuBLAS handles, allocator)
                eager()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            static_out = module(*args)  # noqa: F841 - kept alive with the graph
        return graph.replay, "pytorch cuda-graph"
    except Exception as exc:  # noqa: BLE001 - data-dependent ops (e.g. nonzero) cannot be captured
        torch.cuda.synchronize()
        return eager, f"pytorch eager (cuda graph capture failed: {type(exc).__name__})"


def tensorrt_runner(torch, bench: Bench, max_batch: int, workdir: Path):
    """Builds one fp16 engine with a batch profile 1..max_batch; returns a factory batch -> callable."""
    import tensorrt as trt

    from export.specs import ExportSpec
    from export.tensorrt_build import EngineRunner, build_engine

    names = list(bench.make_inputs(1))
    cpu_inputs = {name: (lambda b, name=name: bench.make_inputs(b)[name].float().cpu()) for name in names}
    # export from a float32 CPU copy would double host memory; export the fp16 CUDA module directly
    spec = ExportSpec(name=bench.name, module=bench.module, inputs=cpu_inputs, outputs=["OUTPUT"], max_batch_size=max_batch)
    onnx_path = workdir / f"{bench.name}.onnx"
    example = tuple(bench.make_inputs(2).values())
    with torch.inference_mode():
        torch.onnx.export(bench.module, example, str(onnx_path), input_names=names,
                          output_names=[f"OUTPUT{i}" for i in range(8)][: _output_count(bench, example)],
                          dynamic_axes={n: {0: "batch"} for n in names}, opset_version=17, dynamo=False)
    plan = build_engine(onnx_path, workdir / f"{bench.name}.plan", spec, max_batch=max_batch, opt_batch=min(8, max_batch))
    runner = EngineRunner(plan)
    dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
              trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}

    def for_batch(batch: int):
        inputs = bench.make_inputs(batch)
        context = runner.context
        for name in runner.input_names:
            tensor = inputs[name].to(dtypes[runner.engine.get_tensor_dtype(name)]).contiguous()
            inputs[name] = tensor
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in runner.output_names:
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=dtypes[runner.engine.get_tensor_dtype(name)], device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()

        def run():
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            return outputs, inputs  # keep the buffers alive

        return run

    return for_batch


def _output_count(bench: Bench, example) -> int:
    import torch

    with torch.inference_mode():
        out = bench.module(*example)
    return len(out) if isinstance(out, (tuple, list)) else 1


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------


def run(options: Options, out_root: Path) -> Path:
    import torch

    if not options.smoke:
        require_cuda(torch)
    cuda = torch.cuda.is_available() and not options.smoke
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float16 if cuda else torch.float32
    started = time.perf_counter()
    notes: list[str] = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    directory = out_root / (f"gpu-{stamp}" if not options.smoke else f"gpu-smoke-{stamp}")
    directory.mkdir(parents=True, exist_ok=False)
    workdir = options.workdir or directory / "engines"

    use_trt = False
    if options.runtime in ("auto", "tensorrt") and cuda:
        from export.tensorrt_build import tensorrt_unavailable_reason

        reason = tensorrt_unavailable_reason()
        use_trt = reason is None
        if reason:
            notes.append(f"TensorRT not used: {reason}")
            if options.runtime == "tensorrt":
                raise SystemExit(f"--runtime tensorrt: {reason}")
    if use_trt:
        workdir.mkdir(parents=True, exist_ok=True)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    print(f"building networks on {device} ({dtype}) ...", file=sys.stderr, flush=True)
    benches = build_benches(torch, options, device, dtype, notes)
    timer = Timer(torch, cuda)
    results: list[Result] = []
    for bench in benches:
        if options.budget_s and time.perf_counter() - started > options.budget_s:
            notes.append(f"{bench.name}: skipped (time budget of {options.budget_s:.0f} s spent)")
            continue
        trt_factory = None
        if use_trt:
            try:
                trt_factory = tensorrt_runner(torch, bench, max(options.batches), workdir)
            except Exception as exc:  # noqa: BLE001 - fall back to PyTorch for this network, say why
                notes.append(f"{bench.name}: TensorRT build failed, PyTorch used ({type(exc).__name__}: {str(exc)[:300]})")
        for batch in options.batches:
            result = Result(bench.name, batch, "")
            try:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                if trt_factory is not None:
                    fn, result.runtime = trt_factory(batch), "tensorrt fp16"
                else:
                    fn, result.runtime = torch_runner(torch, bench, batch, options.torch_mode, cuda)
                times = timer.time(fn, options.warmup, options.iterations)
                result.iterations = len(times)
                result.mean_ms = statistics.fmean(times)
                result.p50_ms = statistics.median(times)
                result.p90_ms = sorted(times)[max(0, int(round(0.9 * len(times))) - 1)]
                result.items_per_s = batch / (result.mean_ms / 1e3)
                if cuda:
                    result.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
            except Exception as exc:  # noqa: BLE001 - OOM at batch 32 etc.: recorded, the run goes on
                oom = "out of memory" in str(exc).lower()
                result.error = "OOM" if oom else f"{type(exc).__name__}: {str(exc)[:300]}"
                if not oom:
                    traceback.print_exc()
                if cuda:
                    torch.cuda.empty_cache()
            results.append(result)
            print(f"[gpu] {bench.name} batch {batch}: "
                  + (f"{result.mean_ms:.2f} ms, {result.items_per_s:.1f} items/s ({result.runtime})" if not result.error
                     else result.error), file=sys.stderr, flush=True)
        bench.module = None
        if cuda:
            torch.cuda.empty_cache()
    write(directory, options, results, benches, notes, time.perf_counter() - started, torch, cuda)
    return directory


def write(directory: Path, options: Options, results: list[Result], benches: list[Bench], notes: list[str],
          duration_s: float, torch, cuda: bool) -> None:
    from dataclasses import asdict

    from benchmarks.plot import bar_chart
    from benchmarks.report import machine_info

    gpu = None
    if cuda:
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": torch.cuda.get_device_name(0), "memory_bytes": props.total_memory,
               "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version()}
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = None
    data = {
        "gpu": gpu, "tensorrt": trt_version, "torch": torch.__version__, "smoke": options.smoke,
        "options": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                    for k, v in options.__dict__.items()},
        "networks": {b.name: b.note for b in benches}, "results": [asdict(r) for r in results], "notes": notes,
        "duration_s": duration_s, "machine": machine_info(),
    }
    (directory / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    title = f"GPU benchmark on {gpu['name']}" if gpu else "GPU benchmark (smoke run on the CPU: numbers mean nothing)"
    lines = [f"# {title}", "", f"torch {torch.__version__}, TensorRT {trt_version or 'absent'}, "
             f"{'CUDA ' + str(gpu['cuda']) if gpu else 'no CUDA'}; {duration_s:.0f} s", "",
             "| network | batch | runtime | mean ms | p50 ms | p90 ms | items/s | peak GPU memory GiB |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if r.error:
            lines.append(f"| {r.model} | {r.batch} | {r.runtime} | {r.error} | | | | |")
        else:
            mem = f"{r.peak_memory_bytes / 2**30:.2f}" if r.peak_memory_bytes else "n/a"
            lines.append(f"| {r.model} | {r.batch} | {r.runtime} | {r.mean_ms:.2f} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | "
                         f"{r.items_per_s:.1f} | {mem} |")
    lines += ["", "Networks: " + "; ".join(f"{k}: {v}" for k, v in data["networks"].items() if v)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (directory / "results.md").write_text("\n".join(lines) + "\n")
    names = [b.name for b in benches]
    if names and results:
        series = {}
        for batch in options.batches:
            by_model = {r.model: r.items_per_s for r in results if r.batch == batch and not r.error}
            series[f"batch {batch}"] = [by_model.get(n) for n in names]
        bar_chart(directory / "throughput.png", "items/s per network and batch", [n.replace("_", " ") for n in names],
                  series, y_title="items/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--models", default=",".join(ALL_MODELS), help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    parser.add_argument("--runtime", choices=("auto", "tensorrt", "torch"), default="auto")
    parser.add_argument("--torch-mode", choices=("cudagraph", "compile", "eager"), default="cudagraph")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=0.0, help="skip the remaining networks after this many seconds")
    parser.add_argument("--smoke", action="store_true", help="tiny presets on the CPU: checks the code path only")
    args = parser.parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = set(models) - set(ALL_MODELS)
    if unknown:
        parser.error(f"unknown networks {sorted(unknown)}; choose from {ALL_MODELS}")
    options = Options(batches=[int(b) for b in args.batches.split(",")], warmup=args.warmup, iterations=args.iterations,
                      runtime=args.runtime, torch_mode=args.torch_mode, models=models, smoke=args.smoke,
                      budget_s=args.budget_s)
    if args.smoke:
        options.batches = [b for b in options.batches if b <= 2] or [1]
        options.warmup, options.iterations = min(options.warmup, 1), min(options.iterations, 2)
    try:
        directory = run(options, Path(args.out))
    except NoCuda as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(directory / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
