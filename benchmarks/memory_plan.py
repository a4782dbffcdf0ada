"""GPU memory plan for serving a preset (default bubogpt-7b) in fp16: how many requests fit.

    python -m benchmarks.memory_plan [--preset bubogpt-7b] [--tokens 2048] [--json plan.json]

    weights      parameter counts from `bubogpt.info.describe` (built on the meta device) x 2 bytes;
                 the grounding models (SAM ViT-H, Grounding DINO Swin-T, RAM Swin-L) listed apart,
                 for a deployment that keeps them on the same GPU
    activations  the working set of ONE prefill of `tokens` positions, one layer at a time
                 (residual + norm + q,k,v + attention output: 6 x hidden; gate, up, act*up:
                 3 x intermediate; flash/paged attention, so no S x S scores), plus the
                 encoders at batch 1; counted once: vLLM reserves it as workspace, not per request
    KV cache     2 (K and V) x layers x hidden x 2 bytes per token (kv_heads x head_dim = hidden for
                 Vicuna-7B: 524,288 bytes = 0.5 MiB per token, 1 GiB per 2048-token request)

    requests that fit = floor((capacity x utilization - weights - activations) / KV per request)

with utilization 0.90 (vLLM's default `gpu_memory_utilization`; the rest covers the CUDA context,
cuBLAS workspaces, CUDA graphs, fragmentation). Capacities are the labels in decimal GB (80e9 and
141e9 bytes), the conservative reading; the JSON also has the count for GiB.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

GPUS_GB = {"24 GB (L4/A10/RTX 4090)": 24, "80 GB (A100/H100)": 80, "141 GB (H200)": 141}
DEFAULT_UTILIZATION = 0.90


def kv_bytes_per_token(llm_cfg, dtype_bytes: int = 2) -> int:
    """K and V for every layer: 2 x layers x (kv_heads x head_dim) x bytes (= 2 x layers x hidden x 2 for 7B)."""
    return 2 * llm_cfg.num_layers * llm_cfg.num_kv_heads * llm_cfg.head_dim * dtype_bytes


def llm_prefill_activation_bytes(llm_cfg, tokens: int, dtype_bytes: int = 2) -> int:
    """Working set of one decoder layer over `tokens` positions (layers run one after the other)."""
    per_token = 6 * llm_cfg.hidden + 3 * llm_cfg.intermediate
    logits = llm_cfg.vocab_size * 4  # fp32 logits of the last position only
    return tokens * per_token * dtype_bytes + logits


def encoder_activation_bytes(cfg, dtype_bytes: int = 2) -> int:
    """Vision and audio encoders at batch 1: one block's working set plus its attention scores."""
    v, a = cfg.vision, cfg.audio
    vision = v.num_tokens * (6 * v.width + 2 * v.mlp_dim) * dtype_bytes + v.num_heads * v.num_tokens**2 * dtype_bytes
    audio = a.num_clips * (a.num_tokens * (6 * a.width + 2 * a.mlp_dim) * dtype_bytes
                           + a.num_heads * a.num_tokens**2 * dtype_bytes)
    return vision + audio


def grounding_parameter_counts() -> tuple[dict[str, int], str]:
    """Parameter counts of the grounding models (meta device); empty with a note if they cannot be built."""
    import torch

    counts: dict[str, int] = {}
    notes = []
    builders = {
        "sam_vit_h": lambda: _sam_vit_h(),
        "grounding_dino_swint": lambda: _grounding_dino(),
        "ram_swin_l": lambda: _ram(),
    }
    for name, build in builders.items():
        try:
            with torch.device("meta"):
                module = build()
            counts[name] = sum(p.numel() for p in module.parameters())
        except Exception as exc:  # noqa: BLE001 - a model still being written elsewhere: leave it out, say so
            notes.append(f"{name}: not counted ({type(exc).__name__}: {exc})")
    return counts, "; ".join(notes)


def _sam_vit_h():
    import torch

    from bubogpt.grounding.sam import SAM_PRESETS, SamImageEncoder, SamPromptDecoder

    cfg = SAM_PRESETS["vit_h"]
    return torch.nn.ModuleList([SamImageEncoder(cfg), SamPromptDecoder(cfg)])


def _grounding_dino():
    from bubogpt.grounding.grounding_dino import build_grounding_dino

    return build_grounding_dino("swint_ogc")


def _ram():
    from bubogpt.grounding.ram import RAM_PRESETS, RamTagger

    return RamTagger(RAM_PRESETS["swin_l_384"])


@dataclass
class GpuFit:
    gpu: str
    capacity_bytes: int
    usable_bytes: int
    free_for_kv_bytes: int
    requests: int
    requests_with_grounding: int | None
    requests_if_gib: int


@dataclass
class MemoryPlan:
    preset: str
    dtype: str
    tokens_per_request: int
    utilization: float
    params: dict[str, int]
    weights_bytes: dict[str, int]
    weights_total_bytes: int
    grounding_weights_bytes: dict[str, int]
    grounding_note: str
    activation_bytes: dict[str, int]
    activation_total_bytes: int
    kv_bytes_per_token: int
    kv_bytes_per_request: int
    fits: list[GpuFit] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_count(capacity: int, utilization: float, fixed: int, per_request: int) -> int:
    return max(0, math.floor((capacity * utilization - fixed) / per_request))


def memory_plan(preset: str = "bubogpt-7b", tokens: int = 2048, utilization: float = DEFAULT_UTILIZATION,
                dtype_bytes: int = 2, gpus_gb: dict[str, float] | None = None, grounding: bool = True) -> MemoryPlan:
    from bubogpt.config import get_preset
    from bubogpt.info import describe

    cfg = get_preset(preset)
    params = {row["component"]: int(row["params"]) for row in describe(cfg)}
    weights = {name: count * dtype_bytes for name, count in params.items()}
    weights_total = sum(weights.values())
    grounding_params, note = grounding_parameter_counts() if grounding else ({}, "not requested")
    grounding_weights = {name: count * dtype_bytes for name, count in grounding_params.items()}
    activations = {
        "llm_prefill": llm_prefill_activation_bytes(cfg.llm, tokens, dtype_bytes),
        "encoders_batch1": encoder_activation_bytes(cfg, dtype_bytes),
    }
    activation_total = sum(activations.values())
    kv_token = kv_bytes_per_token(cfg.llm, dtype_bytes)
    kv_request = kv_token * tokens
    fixed = weights_total + activation_total
    fits = []
    for gpu, gb in (gpus_gb or GPUS_GB).items():
        capacity = int(gb * 1e9)
        with_grounding = fit_count(capacity, utilization, fixed + sum(grounding_weights.values()), kv_request) \
            if grounding_weights else None
        fits.append(GpuFit(
            gpu=gpu, capacity_bytes=capacity, usable_bytes=int(capacity * utilization),
            free_for_kv_bytes=max(0, int(capacity * utilization - fixed)),
            requests=fit_count(capacity, utilization, fixed, kv_request),
            requests_with_grounding=with_grounding,
            requests_if_gib=fit_count(int(gb * 2**30), utilization, fixed, kv_request),
        ))
    return MemoryPlan(
        preset=cfg.name, dtype="fp16" if dtype_bytes == 2 else f"{dtype_bytes} bytes", tokens_per_request=tokens,
        utilization=utilization, params=params, weights_bytes=weights, weights_total_bytes=weights_total,
        grounding_weights_bytes=grounding_weights, grounding_note=note, activation_bytes=activations,
        activation_total_bytes=activation_total, kv_bytes_per_token=kv_token, kv_bytes_per_request=kv_request,
        fits=fits,
    )


def gb(value: int) -> str:
    return f"{value / 1e9:,.2f} GB"


def plan_markdown(plan: MemoryPlan) -> str:
    lines = [f"### Memory plan: {plan.preset}, {plan.dtype}, {plan.tokens_per_request}-token requests",
             "", "| item | bytes | size |", "| --- | ---: | ---: |"]
    for name, value in plan.weights_bytes.items():
        lines.append(f"| weights: {name} ({plan.params[name]:,} params) | {value:,} | {gb(value)} |")
    lines.append(f"| **weights total** | {plan.weights_total_bytes:,} | {gb(plan.weights_total_bytes)} |")
    for name, value in plan.activation_bytes.items():
        lines.append(f"| activations: {name} | {value:,} | {gb(value)} |")
    lines.append(f"| KV cache per token | {plan.kv_bytes_per_token:,} | {plan.kv_bytes_per_token / 2**20:.2f} MiB |")
    lines.append(f"| KV cache per request | {plan.kv_bytes_per_request:,} | {gb(plan.kv_bytes_per_request)} |")
    for name, value in plan.grounding_weights_bytes.items():
        lines.append(f"| grounding weights: {name} (optional) | {value:,} | {gb(value)} |")
    lines += ["", f"| GPU | usable ({plan.utilization:.0%}) | left for KV | concurrent requests | with grounding models |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for fit in plan.fits:
        lines.append(f"| {fit.gpu} | {gb(fit.usable_bytes)} | {gb(fit.free_for_kv_bytes)} | {fit.requests} | "
                     f"{'n/a' if fit.requests_with_grounding is None else fit.requests_with_grounding} |")
    if plan.grounding_note:
        lines += ["", f"Note: {plan.grounding_note}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bubogpt-7b")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--utilization", type=float, default=DEFAULT_UTILIZATION)
    parser.add_argument("--json", help="write the plan here")
    args = parser.parse_args(argv)
    plan = memory_plan(args.preset, args.tokens, args.utilization)
    print(plan_markdown(plan))
    if args.json:
        Path(args.json).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
