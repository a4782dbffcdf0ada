"""Training configuration: typed dataclasses loaded from a TOML (or JSON) file.

    stage = "stage2"                       # or given by `bubo train stage2`
    base_model = "runs/stage1/model"       # our format; "" = the built-in nano model
    output_dir = "runs/stage2"
    seed = 42

    [optim]
    steps = 50000                          # optimizer steps (official: max_epoch x iters_per_epoch)
    init_lr = 3e-5
    ...

    [data]
    batch_size = 12                        # per device and micro-batch
    [[data.datasets]]
    name = "llava"
    kind = "llava"                         # see DATASET_KINDS
    annotations = ["llava/complex_reasoning_77k.json"]
    image_dir = "coco/train2014"
    ratio = 150

Unknown keys, wrong types and missing required fields fail with the dotted path of the field
(`data.datasets[2].kind`). Relative paths are taken relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("stage1", "stage2")
TRAINABLE_COMPONENTS = ("vision_qformer", "vision_proj", "audio_qformer", "audio_proj")
DATASET_KINDS = ("caption_shards", "wavcaps", "clotho_detail", "vggss", "minigpt4_aligned", "llava", "negatives")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# What each stage trains unless `trainable` says otherwise (the official configs).
STAGE_TRAINABLE = {
    "stage1": ("vision_proj", "audio_qformer", "audio_proj"),
    "stage2": ("vision_proj", "audio_proj"),
}
DATASET_MODALITIES = {
    "wavcaps": ("audio",), "clotho_detail": ("audio",), "minigpt4_aligned": ("image",), "llava": ("image",),
    "vggss": ("image", "audio"), "negatives": ("image", "audio"),
}
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config file that does not fit the schema; names the field."""


@dataclass
class DatasetConfig:
    name: str
    kind: str
    ratio: float = 1.0
    # caption_shards: tar shards (brace ranges / globs) and the modality they hold
    shards: list[str] = field(default_factory=list)
    modality: str = "image"
    caption_field: str = "caption"
    # annotation sets: JSON file(s) and media folders
    annotations: list[str] = field(default_factory=list)
    image_dir: str = ""
    audio_dir: str = ""
    audio_ext: str = ""  # default per kind: .flac for wavcaps, .wav otherwise
    image_ext: str = ".jpg"
    # llava
    image_pattern: str = "COCO_train2014_{id:0>12}.jpg"
    with_history: bool = False
    question_templates: bool = True
    # negatives: names of the datasets the images / audios come from
    image_from: str = ""
    audio_from: str = ""
    unrelated_prob: float = 0.5
    pool_size: int = 100_000
    # None: data.skip_bad
    skip_bad: bool | None = None


@dataclass
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    batch_size: int = 4
    shuffle: bool = True
    shuffle_block: int = 1000
    skip_bad: bool = False
    num_workers: int = 0  # decoding threads (0: decode in the training loop)
    prefetch_batches: int = 2
    feature_cache_items: int = 0  # frozen-encoder outputs kept per modality (0: off)
    max_answer_tokens: int = 128  # official max_txt_len (128 stage 1, 196 stage 2)
    end_sym: str | None = None  # None: "\n" in stage 1, "###" in stage 2 (official)
    system_prompt: str = ""  # text before the first ###Human (official training: none)
    paired_order: list[str] = field(default_factory=lambda: ["image", "audio"])


@dataclass
class OptimConfig:
    steps: int = 100
    accum_steps: int = 1
    init_lr: float = 1e-4
    min_lr: float = 8e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    max_grad_norm: float = 0.0  # 0: no clipping (official)


@dataclass
class TrainConfig:
    output_dir: str
    stage: str = ""
    base_model: str = ""
    seed: int = 42
    trainable: list[str] | None = None  # None: the stage's default
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on GPU, fp32 on CPU
    llm_dtype: str = "auto"  # frozen LLM weights: auto = the autocast dtype on GPU, float32 on CPU
    deterministic: bool = False  # torch deterministic algorithms (bitwise-exact resume on GPU; slower)
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 3
    progress: bool = True
    tensorboard: bool = True
    llm_output: str = "symlink"  # symlink | copy: how the unchanged LLM goes into the output model
    export_official: bool = True  # also write bubogpt.pth with bubogpt_7b.pth keys
    export_vision_qformer: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------


def load_config(path: str | Path, stage: str | None = None) -> TrainConfig:
    """Reads a .toml or .json file; `stage` (from the command line) must agree with the file's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return config_from_dict(data, stage)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def config_from_dict(data: dict[str, Any], stage: str | None = None) -> TrainConfig:
    cfg = _build(TrainConfig, data, "")
    if stage is not None:
        if cfg.stage and cfg.stage != stage:
            raise ConfigError(f"stage: the file says {cfg.stage!r} but {stage!r} was asked for")
        cfg.stage = stage
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    def check(ok: bool, where: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {message}")

    check(cfg.stage in STAGES, "stage", f"must be one of {list(STAGES)}, got {cfg.stage!r}")
    check(bool(cfg.output_dir), "output_dir", "is required")
    if cfg.trainable is not None:
        for name in cfg.trainable:
            check(name in TRAINABLE_COMPONENTS, "trainable", f"{name!r} cannot be trained; choose from {list(TRAINABLE_COMPONENTS)} (encoders and the LLM stay frozen)")
        check(bool(cfg.trainable), "trainable", "is empty")
    check(cfg.device in ("auto", "cpu", "cuda"), "device", f"must be auto, cpu or cuda, got {cfg.device!r}")
    check(cfg.precision in PRECISIONS, "precision", f"must be one of {list(PRECISIONS)}, got {cfg.precision!r}")
    check(cfg.llm_dtype in DTYPES, "llm_dtype", f"must be one of {list(DTYPES)}, got {cfg.llm_dtype!r}")
    check(cfg.llm_output in ("symlink", "copy"), "llm_output", f"must be symlink or copy, got {cfg.llm_output!r}")
    for name in ("log_every", "save_every", "keep_checkpoints"):
        check(getattr(cfg, name) >= 1, name, "must be >= 1")
    o = cfg.optim
    check(o.steps >= 1, "optim.steps", "must be >= 1")
    check(o.accum_steps >= 1, "optim.accum_steps", "must be >= 1")
    check(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    check(o.init_lr > 0, "optim.init_lr", "must be > 0")
    check(0 <= o.min_lr <= o.init_lr, "optim.min_lr", "must be in [0, init_lr]")
    check(o.warmup_lr >= 0, "optim.warmup_lr", "must be >= 0")
    d = cfg.data
    check(bool(d.datasets), "data.datasets", "needs at least one dataset")
    check(d.batch_size >= 1, "data.batch_size", "must be >= 1")
    check(d.shuffle_block >= 1, "data.shuffle_block", "must be >= 1")
    check(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    check(d.prefetch_batches >= 1, "data.prefetch_batches", "must be >= 1")
    check(d.feature_cache_items >= 0, "data.feature_cache_items", "must be >= 0")
    check(d.max_answer_tokens >= 1, "data.max_answer_tokens", "must be >= 1")
    check(sorted(d.paired_order) == ["audio", "image"], "data.paired_order", f"must list 'image' and 'audio' once each, got {d.paired_order}")
    names = [ds.name for ds in d.datasets]
    for i, ds in enumerate(d.datasets):
        where = f"data.datasets[{i}]"
        check(bool(ds.name), f"{where}.name", "is required")
        check(names.count(ds.name) == 1, f"{where}.name", f"{ds.name!r} is used twice")
        check(ds.kind in DATASET_KINDS, f"{where}.kind", f"must be one of {list(DATASET_KINDS)}, got {ds.kind!r}")
        check(ds.ratio > 0, f"{where}.ratio", "must be > 0")
        if ds.kind == "caption_shards":
            check(bool(ds.shards), f"{where}.shards", "is required for caption_shards")
            check(ds.modality in ("image", "audio"), f"{where}.modality", f"must be image or audio, got {ds.modality!r}")
        elif ds.kind == "negatives":
            for ref in ("image_from", "audio_from"):
                target = getattr(ds, ref)
                check(target in names and target != ds.name, f"{where}.{ref}", f"must name another dataset of this config, got {target!r}")
            check(0 <= ds.unrelated_prob <= 1, f"{where}.unrelated_prob", "must be in [0, 1]")
            check(ds.pool_size >= 1, f"{where}.pool_size", "must be >= 1")
        else:
            check(bool(ds.annotations), f"{where}.annotations", f"is required for {ds.kind}")
            if ds.kind in ("wavcaps", "clotho_detail", "vggss"):
                check(bool(ds.audio_dir), f"{where}.audio_dir", f"is required for {ds.kind}")
            if ds.kind in ("vggss", "minigpt4_aligned", "llava"):
                check(bool(ds.image_dir), f"{where}.image_dir", f"is required for {ds.kind}")
        if cfg.stage == "stage1":
            check(ds.kind in ("caption_shards", "wavcaps"), f"{where}.kind",
                  f"stage 1 trains on captions (caption_shards, wavcaps), not {ds.kind!r}")
        # every batch must reach something trainable (else it has no gradient at all)
        if ds.kind in DATASET_KINDS and cfg.stage in STAGES:
            trained = set(cfg.trainable or STAGE_TRAINABLE[cfg.stage])
            modalities = (ds.modality,) if ds.kind == "caption_shards" else DATASET_MODALITIES[ds.kind]
            prefixes = {"image": "vision_", "audio": "audio_"}
            check(any(t.startswith(prefixes[m]) for m in modalities for t in trained), f"{where}",
                  f"its {' + '.join(modalities)} samples reach no trained component (trainable: {sorted(trained)})")


# --------------------------------------------------------------------------------------------------


def _build(kind: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(kind)
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown field(s) {unknown}; known: {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: is required")
            continue
        values[name] = _convert(hints[name], data[name], path)
    return kind(**values)


def _convert(hint: Any, value: Any, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")
