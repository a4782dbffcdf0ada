"""The training loop (plain PyTorch) shared by stage 1 and stage 2.

    trainer = Trainer(load_config("training/configs/stage1_nano.toml", "stage1"))
    history = trainer.fit(resume=None)        # list of per-step records (loss, lr, tokens, ...)

- Mixed precision on GPU: autocast in bf16 (fp16 where bf16 is unsupported, with a GradScaler);
  fp32 on CPU. Trained weights and optimizer state stay fp32; the frozen LLM is held in the autocast
  dtype on GPU.
- Gradient accumulation over `optim.accum_steps` micro-batches (loss / accum_steps, as LAVIS does).
- LR schedule (LAVIS `linear_warmup_cosine_lr`, per optimizer step t of T): linear from warmup_lr to
  init_lr over warmup_steps, then min_lr + (init_lr - min_lr) * (1 + cos(pi * t / T)) / 2.
- AdamW (betas 0.9 / beta2, weight decay on matrices only: not on biases, norms, 1-d tensors).
- Checkpoints every `save_every` steps and at the end: trained weights, optimizer, scheduler, grad
  scaler, RNG states and the data position; `fit(resume=...)` continues exactly where it stopped
  (the same per-step losses as an uninterrupted run).
- DDP through torch.distributed when launched by torchrun (WORLD_SIZE > 1): each rank takes its slice
  of every global batch; rank 0 logs, checkpoints and exports.
- Outputs in `output_dir`: `model/` (our format, LLM linked or copied from the base model),
  `bubogpt.pth` (official bubogpt_7b.pth keys), `metrics.jsonl`, `checkpoints/`, `train_config.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bubogpt.weights import llm_dir as model_llm_dir
from training.batches import BatchLoader, Formatter, llava_templates
from training.config import TrainConfig
from training.datasets import (
    CaptionShards,
    ClothoDetail,
    LLaVAInstruct,
    MiniGPT4Aligned,
    Reader,
    VGGSSInstruct,
    WavCapsJSON,
)
from training.negatives import NegativePairs
from training.run_outputs import export_official, save_trained_model
from training.seeding import capture_rng, restore_rng, seed_everything
from training.stages import STAGE_END_SYM, TrainStep, autocast_context, freeze, trainable_components
from training.step_log import MetricsLog
from training.steps import optimizer_step
from training.stream import Mixture, NegativeStream, SourceStream

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "bubogpt-train-checkpoint"
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------


def lr_at(step: int, cfg) -> float:
    """LAVIS LinearWarmupCosineLRScheduler for optimizer step `step` (0-based) of cfg.steps."""
    if step < cfg.warmup_steps:
        return min(cfg.init_lr, cfg.warmup_lr + (cfg.init_lr - cfg.warmup_lr) * step / max(cfg.warmup_steps, 1))
    return cfg.min_lr + (cfg.init_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * step / cfg.steps))


def build_optimizer(params: list[tuple[str, nn.Parameter]], cfg) -> torch.optim.AdamW:
    decay = [p for n, p in params if p.ndim >= 2 and not n.endswith(".bias") and "norm" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and not n.endswith(".bias") and "norm" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.init_lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


def build_scheduler(optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg) / cfg.init_lr)


def build_readers(cfg: TrainConfig) -> dict[str, Reader]:
    readers: dict[str, Reader] = {}
    for ds in cfg.data.datasets:
        skip_bad = cfg.data.skip_bad if ds.skip_bad is None else ds.skip_bad
        if ds.kind == "caption_shards":
            reader = CaptionShards(ds.name, ds.shards, modality=ds.modality, skip_bad=skip_bad, caption_field=ds.caption_field)
        elif ds.kind == "wavcaps":
            reader = WavCapsJSON(ds.name, ds.annotations, ds.audio_dir, audio_ext=ds.audio_ext or ".flac", skip_bad=skip_bad)
        elif ds.kind == "clotho_detail":
            reader = ClothoDetail(ds.name, ds.annotations, ds.audio_dir, audio_ext=ds.audio_ext or ".wav", skip_bad=skip_bad)
        elif ds.kind == "vggss":
            reader = VGGSSInstruct(ds.name, ds.annotations, ds.audio_dir, ds.image_dir, audio_ext=ds.audio_ext or ".wav",
                                   image_ext=ds.image_ext, skip_bad=skip_bad)
        elif ds.kind == "minigpt4_aligned":
            reader = MiniGPT4Aligned(ds.name, ds.annotations, ds.image_dir, image_ext=ds.image_ext, skip_bad=skip_bad)
        elif ds.kind == "llava":
            reader = LLaVAInstruct(ds.name, ds.annotations, ds.image_dir, image_pattern=ds.image_pattern,
                                   with_history=ds.with_history, skip_bad=skip_bad)
        else:
            continue  # negatives: built from the others
        readers[ds.name] = reader
    return readers


def build_mixture(cfg: TrainConfig, readers: dict[str, Reader], world_size: int = 1, rank: int = 0) -> Mixture:
    streams = {}
    for ds in cfg.data.datasets:
        if ds.kind == "negatives":
            pairs = NegativePairs(ds.name, readers[ds.image_from], readers[ds.audio_from], seed=cfg.seed,
                                  unrelated_prob=ds.unrelated_prob, pool_size=ds.pool_size)
            streams[ds.name] = NegativeStream(pairs)
        else:
            streams[ds.name] = SourceStream(readers[ds.name], seed=cfg.seed, shuffle=cfg.data.shuffle, block_size=cfg.data.shuffle_block)
    ratios = {ds.name: ds.ratio for ds in cfg.data.datasets}
    return Mixture(streams, ratios, seed=cfg.seed, batch_size=cfg.data.batch_size, world_size=world_size, rank=rank)


@dataclass
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        return cls(int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_precision(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, torch.dtype]:
    """(autocast dtype or None for fp32, LLM weight dtype)."""
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if device.type != "cuda":
        if cfg.precision in ("bf16", "fp16"):
            log.warning("precision %s asked for on CPU: training in fp32", cfg.precision)
        autocast = None
    elif cfg.precision == "fp32":
        autocast = None
    elif cfg.precision == "bf16":
        autocast = torch.bfloat16
    elif cfg.precision == "fp16":
        autocast = torch.float16
    else:
        autocast = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cfg.llm_dtype == "auto":
        llm_dtype = autocast or torch.float32
    else:
        llm_dtype = names[cfg.llm_dtype]
    return autocast, llm_dtype


def list_checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("step_*.pt"))


def find_checkpoint(resume: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """A checkpoint file, a checkpoint folder (latest inside), or "latest" (this run's folder)."""
    path = Path(output_dir) / "checkpoints" if str(resume) == "latest" else Path(resume)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"no checkpoints (step_*.pt) in {path}")
        return found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: TrainConfig, *, model=None, llm=None, tokenizer=None):
        """`model`, `llm`, `tokenizer` may be given already loaded (then `cfg.base_model` still names
        the base directory, whose LLM folder the output links to)."""
        self.config = cfg
        self.dist = DistInfo.from_env()
        self.out = Path(cfg.output_dir)
        self._preloaded = (model, llm, tokenizer)

    # ---- setup -----------------------------------------------------------------------------------
    def _base_dir(self) -> Path:
        if self.config.base_model:
            return Path(self.config.base_model)
        from bubogpt.defaults import default_model_dir

        return default_model_dir()

    def _setup(self) -> None:
        cfg = self.config
        if self.dist.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend=backend)
        if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
            self.device = torch.device("cpu")
        else:
            if not torch.cuda.is_available():
                raise RuntimeError("device = 'cuda' but no CUDA device is available")
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.autocast_dtype, llm_dtype = resolve_precision(cfg, self.device)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)

        base = self._base_dir()
        if base.resolve() == (self.out / "model").resolve():
            raise ValueError(f"output_dir {self.out} would overwrite the base model {base}; choose another output_dir")
        model, llm, tokenizer = self._preloaded
        if model is None:
            from bubogpt.weights import load_model

            model = load_model(base)
        if llm is None:
            from bubogpt.llm import load_llm

            llm = load_llm(model_llm_dir(base), dtype=llm_dtype)
        else:
            llm = llm.to(llm_dtype)
        if tokenizer is None:
            from bubogpt.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(model_llm_dir(base))
        self.base = base
        self.model, self.llm, self.tokenizer = model.to(self.device), llm.to(self.device), tokenizer

        self.trainable = trainable_components(cfg.stage, cfg.trainable)
        self.params = freeze(self.model, self.llm, self.trainable)
        self.step_module = TrainStep(self.model, self.llm, self.trainable, cache_items=cfg.data.feature_cache_items)
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            frozen = [n for n, p in self.step_module.named_parameters() if not p.requires_grad]
            frozen += [n for n, _ in self.step_module.named_buffers()]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.step_module, frozen)
            self.ddp = DistributedDataParallel(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # a batch of one modality leaves the other's parameters unused
            )

        self.optimizer = build_optimizer(self.params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)

        readers = build_readers(cfg)
        self.mixture = build_mixture(cfg, readers, self.dist.world_size, self.dist.rank)
        llava = [ds.name for ds in cfg.data.datasets if ds.kind == "llava" and ds.question_templates]
        self.formatter = Formatter(
            tokenizer, model.config, cfg.stage, cfg.seed,
            end_sym=cfg.data.end_sym if cfg.data.end_sym is not None else STAGE_END_SYM[cfg.stage],
            max_answer_tokens=cfg.data.max_answer_tokens, system_prompt=cfg.data.system_prompt,
            paired_order=cfg.data.paired_order, question_templates=llava_templates(llava),
        )
        self.step = 0

    # ---- checkpoints -----------------------------------------------------------------------------
    def _checkpoint_state(self, data_state: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "stage": self.config.stage,
            "step": self.step,
            "trainable": {n: p.detach().to("cpu", copy=True) for n, p in self.params},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "data": data_state,
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self, data_state: dict[str, Any]) -> Path | None:
        if not self.dist.main:
            return None
        directory = self.out / "checkpoints"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"step_{self.step:07d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self._checkpoint_state(data_state), tmp)
        os.replace(tmp, path)
        for old in list_checkpoints(directory)[: -self.config.keep_checkpoints]:
            old.unlink()
        log.info("checkpoint %s", path)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: not a BuboGPT training checkpoint (format {state.get('format')!r} v{state.get('version')!r})")
        if state["stage"] != self.config.stage:
            raise ValueError(f"{path}: a {state['stage']} checkpoint cannot resume {self.config.stage}")
        names = [n for n, _ in self.params]
        if list(state["trainable"]) != names:
            raise ValueError(f"{path}: trains {sorted(state['trainable'])}, this config trains {sorted(names)}")
        old = state["config"]
        for key in ("seed", "data", "optim"):
            if old.get(key) != self.config.to_dict()[key]:
                log.warning("%s: config field %r differs from the checkpoint's; the run will not match an uninterrupted one", path, key)
        with torch.no_grad():
            for name, param in self.params:
                param.copy_(state["trainable"][name].to(param.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.mixture.load_state(state["data"])
        restore_rng(state["rng"])
        self.step = state["step"]
        log.info("resumed from %s at step %d", path, self.step)

    # ---- training --------------------------------------------------------------------------------
    def fit(self, resume: str | os.PathLike | None = None) -> list[dict[str, Any]]:
        self._setup()
        cfg = self.config
        if resume:
            self.load_checkpoint(find_checkpoint(resume, cfg.output_dir))
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        metrics = MetricsLog(self.out, tensorboard=cfg.tensorboard, enabled=self.dist.main)
        loader = BatchLoader(self.mixture, self.formatter, self.model.config, skip_bad=cfg.data.skip_bad,
                             num_workers=cfg.data.num_workers, prefetch_batches=cfg.data.prefetch_batches,
                             skip_decode=self.step_module.cached)
        module = self.ddp or self.step_module
        history: list[dict[str, Any]] = []
        progress = None
        if cfg.progress and self.dist.main:
            from tqdm import tqdm

            progress = tqdm(total=cfg.optim.steps, initial=self.step, desc=cfg.stage, dynamic_ncols=True)
        n_trainable = sum(p.numel() for _, p in self.params)
        log.info("%s: training %s (%d parameters) for %d steps on %s, precision %s", cfg.stage, ", ".join(self.trainable),
                 n_trainable, cfg.optim.steps, self.device, self.autocast_dtype or torch.float32)
        data_state = self.mixture.state_dict()
        try:
            while self.step < cfg.optim.steps:
                started = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                losses, tokens, samples, sources = [], 0, 0, Counter()
                accum = cfg.optim.accum_steps
                for micro in range(accum):
                    batch = next(loader)
                    sync = self.ddp is None or micro == accum - 1
                    with contextlib.nullcontext() if sync else self.ddp.no_sync():
                        with autocast_context(self.device, self.autocast_dtype):
                            loss, n_tokens = module(batch)
                        if loss.requires_grad:
                            self.scaler.scale(loss / accum).backward()
                    losses.append(loss.detach().float().item())
                    tokens += n_tokens
                    samples += len(batch)
                    sources[batch.source] += len(batch)
                    data_state = batch.state
                grad_norm = optimizer_step(self.optimizer, [p for _, p in self.params], cfg.optim.max_grad_norm, self.scaler)
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1

                loss_value = sum(losses) / len(losses)
                if self.dist.enabled:
                    reduced = torch.tensor([loss_value], device=self.device)
                    torch.distributed.all_reduce(reduced)
                    loss_value = float(reduced) / self.dist.world_size
                elapsed = time.perf_counter() - started
                record = {"step": self.step, "loss": loss_value, "lr": lr, "tokens": tokens, "samples": samples,
                          "samples_per_s": samples / elapsed if elapsed > 0 else 0.0, "step_s": elapsed,
                          "sources": dict(sources)}
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                history.append(record)
                if self.step % cfg.log_every == 0 or self.step == cfg.optim.steps:
                    metrics.write(record)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                if self.step % cfg.save_every == 0 or self.step == cfg.optim.steps:
                    self.save_checkpoint(data_state)
                    if self.dist.enabled:
                        torch.distributed.barrier()
        finally:
            loader.close()
            metrics.close()
            if progress is not None:
                progress.close()
        if self.dist.main:
            self.export()
        if self.dist.enabled:
            torch.distributed.barrier()
        return history

    def export(self) -> Path:
        """Writes `model/` (our format) and, unless disabled, `bubogpt.pth` (official keys)."""
        provenance = {"kind": "trained", "stage": self.config.stage, "steps": self.step, "base_model": str(Path(self.base).resolve()),
                      "trainable": list(self.trainable), "datasets": [ds.name for ds in self.config.data.datasets]}
        model_dir = save_trained_model(self.model, self.out / "model", model_llm_dir(self.base), self.config.llm_output, provenance)
        if self.config.export_official:
            export_official(self.model, self.out / "bubogpt.pth", include_vision_qformer=self.config.export_vision_qformer)
        log.info("wrote %s%s", model_dir, " and bubogpt.pth" if self.config.export_official else "")
        return model_dir
