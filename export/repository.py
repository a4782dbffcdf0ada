"""Writes a complete Triton model repository: networks, python pre-processing models, ensembles.

GPU repositories (TensorRT plans, dynamic batching per network) keep one Triton model per step:

    REPO/
      image_preprocess/{config.pbtxt, 1/model.py, 1/bubo.json}
      audio_preprocess/...
      vision_encoder/{config.pbtxt, 1/model.plan | 1/model.onnx + model.py + bubo.json}
      vision_qformer/ audio_encoder/ audio_qformer/
      image_embed/{config.pbtxt, 1/}      ensemble: IMAGE bytes -> EMBEDS [32, llm_width]
      audio_embed/{config.pbtxt, 1/}      ensemble: AUDIO bytes -> EMBEDS [32, llm_width]

CPU repositories fuse each modality into one python-backend model (front end, encoder and Q-Former
in one process: no shared-memory hop between them, two stubs fewer; `RepositorySettings.fused_embeds`):

    REPO/
      image_embed/{config.pbtxt, 1/model.py, 1/bubo.json, 1/vision_encoder/model.onnx, 1/vision_qformer/model.onnx}
      audio_embed/{..., 1/audio_encoder/model.onnx, 1/audio_qformer/model.onnx}

Everything is built in a staging directory next to REPO and moved into place only when every
artefact passed its parity check, so a failed export never leaves a half-written repository.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from bubogpt.model import BuboGPT
from export.onnx_export import ParityError, ParityResult, check_onnx, export_onnx, onnx_files
from export.specs import ExportSpec, grounding_specs, modality_specs

log = logging.getLogger(__name__)

def _templates() -> Path:
    """The python-backend templates (model_repository/, installed as package data)."""
    import importlib.resources

    return Path(str(importlib.resources.files("model_repository")))


TEMPLATES = _templates()


@dataclass
class BatchingSettings:
    """Dynamic batching and instances of one model."""

    max_batch_size: int = 8
    preferred: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000
    instances: int = 1


# Chosen by measurement (benchmarks/README.md, "Dynamic batching"): on 2 CPU cores ONNX Runtime
# already uses every core for one request, so waiting to fill a batch only adds latency (image_embed
# p50 at c=1: 15 ms with a 2 ms queue delay vs 7.4 ms without; throughput at c=8 within noise).
# Delay 0 still batches whatever is queued at the same moment. On GPUs batches pay: wait up to 2 ms
# for 4 or 8. Pre/post-processing models run one instance per model on CPU machines (each python
# instance is a process holding its own torch: ~250 MB) and two on GPU hosts.
CPU_ENCODERS = BatchingSettings(preferred=(), max_queue_delay_us=0, instances=1)
GPU_ENCODERS = BatchingSettings(preferred=(4, 8), max_queue_delay_us=2000, instances=1)
CPU_PREPROCESS = BatchingSettings(preferred=(), max_queue_delay_us=0, instances=1)
GPU_PREPROCESS = BatchingSettings(preferred=(), max_queue_delay_us=0, instances=2)


@dataclass
class RepositorySettings:
    device: str = "cpu"  # "cpu" (python backend + ONNX Runtime) or "cuda" (TensorRT plans)
    execution_env: str | None = None  # venv the python-backend models run in
    max_image_pixels: int = 40_000_000
    max_audio_seconds: float = 600.0
    # ONNX Runtime threads per CPU model instance (0: a pool of one per core). The pool's threads must not
    # spin when idle: a served stack runs 8 python-backend models and vLLM on the same cores, and on 2
    # cores spinning pools cost 1.8x in c=16 throughput and 1.9x in c=1 TTFT (benchmarks/README.md, ORT threads).
    intra_op_threads: int = 0
    allow_spinning: bool = False
    encoders: BatchingSettings | None = None  # None: the measured defaults for the device
    preprocess: BatchingSettings | None = None
    # one python model per modality instead of the three-model ensemble (None: on CPU; GPU repositories
    # keep a Triton model per network for their TensorRT plans). Measured: benchmarks/README.md, "fused"
    fused_embeds: bool | None = None

    def __post_init__(self) -> None:
        gpu = self.device == "cuda"
        if self.fused_embeds is None:
            self.fused_embeds = not gpu
        if self.encoders is None:
            self.encoders = GPU_ENCODERS if gpu else CPU_ENCODERS
        if self.preprocess is None:
            self.preprocess = GPU_PREPROCESS if gpu else CPU_PREPROCESS


# ------------------------------------------------------------------------------------------------
# config.pbtxt text
# ------------------------------------------------------------------------------------------------


def _dims(dims) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def tensor_block(kind: str, tensors: list[tuple[str, str, list[int]]]) -> str:
    items = [f'  {{ name: "{name}" data_type: {dtype} dims: {_dims(dims)} }}' for name, dtype, dims in tensors]
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def model_config(
    name: str,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    batching: BatchingSettings,
    backend: str = "python",
    platform: str | None = None,
    device: str = "cpu",
    execution_env: str | None = None,
) -> str:
    text = f'name: "{name}"\n'
    text += f'platform: "{platform}"\n' if platform else f'backend: "{backend}"\n'
    text += f"max_batch_size: {batching.max_batch_size}\n"
    text += tensor_block("input", inputs) + tensor_block("output", outputs)
    if batching.max_batch_size > 0 and batching.max_queue_delay_us >= 0:
        preferred = "".join(f" preferred_batch_size: {size}" for size in batching.preferred if size <= batching.max_batch_size)
        text += f"dynamic_batching {{{preferred} max_queue_delay_microseconds: {batching.max_queue_delay_us} }}\n"
    kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
    text += f"instance_group [ {{ kind: {kind} count: {batching.instances} }} ]\n"
    if execution_env and not platform:
        text += f'parameters: {{ key: "EXECUTION_ENV_PATH", value: {{ string_value: "{execution_env}" }} }}\n'
    return text


def ensemble_config(
    name: str,
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    steps: list[tuple[str, dict[str, str], dict[str, str]]],
    max_batch_size: int,
) -> str:
    text = f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
    text += tensor_block("input", inputs) + tensor_block("output", outputs)
    text += "ensemble_scheduling {\n  step [\n"
    blocks = []
    for model, input_map, output_map in steps:
        maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in input_map.items())
        maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in output_map.items())
        blocks.append(f'    {{ model_name: "{model}" model_version: -1{maps} }}')
    return text + ",\n".join(blocks) + "\n  ]\n}\n"


# ------------------------------------------------------------------------------------------------
# writers
# ------------------------------------------------------------------------------------------------


def _write_python_model(repo: Path, name: str, template: str, config: str, settings: dict) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy(TEMPLATES / template / "model.py", version / "model.py")
    (version / "bubo.json").write_text(json.dumps(settings, indent=2) + "\n")
    (repo / name / "config.pbtxt").write_text(config)


TRITON_TYPES = {
    "torch.float32": "TYPE_FP32", "torch.float16": "TYPE_FP16", "torch.int64": "TYPE_INT64",
    "torch.int32": "TYPE_INT32", "torch.bool": "TYPE_BOOL", "float32": "TYPE_FP32", "float16": "TYPE_FP16",
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "bool": "TYPE_BOOL",
}


def triton_dims(spec: ExportSpec, name: str, shape) -> list[int]:
    """Config dims: without the batch axis when Triton batches, -1 on every dynamic axis."""
    dynamic = spec.dynamic_axes().get(name, {})
    dims = [-1 if axis in dynamic else int(size) for axis, size in enumerate(shape)]
    return dims[1:] if spec.max_batch_size > 0 else dims


# the embedding networks per modality: (Triton model, front-end input, encoder, Q-Former)
EMBEDDING_MODELS = {
    "image": ("image_embed", "IMAGE", "vision_encoder", "vision_qformer"),
    "audio": ("audio_embed", "AUDIO", "audio_encoder", "audio_qformer"),
}


def holding_model(network: str, fused: bool) -> str:
    """The Triton model whose version directory holds `network`'s file."""
    if fused:
        for model, _, encoder, qformer in EMBEDDING_MODELS.values():
            if network in (encoder, qformer):
                return model
    return network


def network_onnx(repo: str | Path, network: str) -> Path:
    """`network`'s ONNX file in the latest version of a repository of either layout."""
    repo = Path(repo)
    fused = json.loads((repo / "bubo_repository.json").read_text()).get("fused_embeds", False)
    model_dir = repo / holding_model(network, fused)
    latest = max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()))
    return model_dir / str(latest) / (f"{network}/model.onnx" if fused and model_dir.name != network else "model.onnx")


def network_settings(repo: str | Path, network: str) -> dict:
    """The settings (bubo.json) of the Triton model that runs `network`, latest version: in a fused CPU
    repository the fused model's (thread settings and its front end's)."""
    path = network_onnx(repo, network)
    version = path.parent if path.parent.name.isdigit() else path.parent.parent
    return json.loads((version / "bubo.json").read_text())


def _export_network(repo: Path, spec: ExportSpec, settings: RepositorySettings, backend: str,
                    standalone: bool = True) -> ParityResult:
    """Exports and checks one network into REPO/name/1/. `standalone` False: the ONNX file only, for
    a fused model to take in (no Triton model of its own)."""
    from export.onnx_export import torch_outputs

    version = repo / spec.name / "1"
    version.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(spec, version / "model.onnx")
    result = check_onnx(spec, onnx_path)
    if not standalone:
        return result
    example = spec.example(1)
    outputs = torch_outputs(spec, example)
    inputs_cfg = [(name, TRITON_TYPES[str(t.dtype)], triton_dims(spec, name, t.shape)) for name, t in example.items()]
    outputs_cfg = [(name, TRITON_TYPES[str(o.dtype)], triton_dims(spec, name, o.shape)) for name, o in zip(spec.outputs, outputs)]
    batching = dataclasses.replace(settings.encoders, max_batch_size=spec.max_batch_size)
    if backend == "tensorrt":
        from export.tensorrt_build import build_engine, check_engine

        plan = build_engine(onnx_path, version / "model.plan", spec, max_batch=max(1, batching.max_batch_size))
        result = check_engine(spec, plan)
        for file in onnx_files(onnx_path):
            file.unlink()
        config = model_config(spec.name, inputs_cfg, outputs_cfg, batching, platform="tensorrt_plan", device="cuda")
        (repo / spec.name / "config.pbtxt").write_text(config)
        return result
    shutil.copy(TEMPLATES / "onnx_runtime" / "model.py", version / "model.py")
    (version / "bubo.json").write_text(json.dumps({"intra_op_threads": settings.intra_op_threads,
                                                   "allow_spinning": settings.allow_spinning}) + "\n")
    config = model_config(spec.name, inputs_cfg, outputs_cfg, batching, device=settings.device, execution_env=settings.execution_env)
    (repo / spec.name / "config.pbtxt").write_text(config)
    return result


def next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    return max(versions, default=0) + 1


def update_repository(
    repo: str | Path,
    model: BuboGPT,
    settings: RepositorySettings | None = None,
    grounding=None,
    release: bool = False,
) -> dict[str, int]:
    """New weights into a repository that Triton may be serving: every network gets a new version.

    The new versions are exported and parity-checked in a staging repository first, then each version
    directory is moved into place with one rename, so a Triton polling the repository
    (`--model-control-mode=poll`) never sees a half-written version; the ensembles reference version
    -1 (latest) and switch over as soon as Triton has loaded the new versions.
    Returns {Triton model: version} for the models that hold networks (in a fused CPU repository
    image_embed and audio_embed hold the encoders and Q-Formers).
    """
    repo = Path(repo).resolve()
    manifest_path = repo / "bubo_repository.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{repo} is not a repository written by `bubo export`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("config") != json.loads(json.dumps(model.config.to_dict())):
        raise ValueError(f"{repo} serves a model with another configuration; export a new repository instead")
    # the new versions take the repository's layout, whatever the settings' default
    settings = dataclasses.replace(settings or RepositorySettings(device="cuda" if manifest["backend"] == "tensorrt" else "cpu"),
                                   fused_embeds=bool(manifest.get("fused_embeds", False)))
    staging_parent = Path(tempfile.mkdtemp(prefix=".update-", dir=repo.parent))
    try:
        staged = staging_parent / "repo"
        results = write_repository(staged, model, manifest["backend"], settings, grounding=grounding, release=release)
        versions = {}
        for name in dict.fromkeys(holding_model(r.name, settings.fused_embeds) for r in results):
            target = repo / name
            version = next_version(target)
            (staged / name / "1").rename(target / str(version))
            versions[name] = version
        manifest["versions"] = versions
        manifest["parity"] = [dataclasses.asdict(r) for r in results]
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        log.info("new versions in %s: %s", repo, versions)
        return versions
    finally:
        shutil.rmtree(staging_parent, ignore_errors=True)


def write_repository(
    out: str | Path,
    model: BuboGPT,
    backend: str = "onnx",
    settings: RepositorySettings | None = None,
    overwrite: bool = False,
    grounding=None,
    release: bool = False,
) -> list[ParityResult]:
    """Exports every network, checks parity, writes configs and ensembles; atomic on success.

    `grounding` (a bubogpt.grounding.pipeline.GroundingPipeline) adds the tagger, detector and SAM
    networks and the `grounding` ensemble. `release` frees each network's weights once it is exported
    (moved to the meta device: `model` and `grounding` are unusable after): at full size the modality
    side and the grounding networks hold about 10 GiB in float32, and SAM ViT-H's parity check needs
    what the exported ones held (the first full-size export ran out of 24 GiB there).
    """
    if backend not in ("onnx", "tensorrt"):
        raise ValueError(f"backend must be onnx or tensorrt, got {backend!r}")
    settings = settings or RepositorySettings(device="cuda" if backend == "tensorrt" else "cpu")
    if settings.fused_embeds and backend == "tensorrt":
        raise ValueError("fused embedding models run ONNX Runtime; TensorRT repositories keep one model per network")
    if backend == "tensorrt":
        from export.tensorrt_build import require_tensorrt

        require_tensorrt()
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
    try:
        cfg = model.config
        specs = modality_specs(model)
        if grounding is not None:
            specs += grounding_specs(grounding)
        fused = {network for _, _, *networks in EMBEDDING_MODELS.values() for network in networks} if settings.fused_embeds else set()
        results = []
        for spec in tqdm(specs, desc=f"export ({backend})", unit="model"):
            results.append(_export_network(staging, spec, settings, backend, standalone=spec.name not in fused))
            if release:
                spec.module.to("meta")
        if settings.fused_embeds:
            _write_fused_embeds(staging, model, settings)
        else:
            _write_pre_and_ensembles(staging, model, settings)
        if grounding is not None:
            _write_grounding(staging, grounding, settings)
        failed = [r for r in results if not r.ok]
        print_summary(results)
        if failed:
            names = ", ".join(f"{r.name} ({r.relative_error:.2e} > {r.tolerance:.0e})" for r in failed)
            raise ParityError(f"parity check failed for {names}; the repository was not written")
        (staging / "bubo_repository.json").write_text(
            json.dumps({"preset": cfg.name, "backend": backend, "config": cfg.to_dict(),
                        "grounding": grounding is not None, "fused_embeds": settings.fused_embeds,
                        "parity": [dataclasses.asdict(r) for r in results]}, indent=2) + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        log.info("wrote Triton model repository %s", out)
        return results
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _write_pre_and_ensembles(repo: Path, model: BuboGPT, settings: RepositorySettings) -> None:
    cfg = model.config
    v, a = cfg.vision, cfg.audio
    pre = settings.preprocess
    # preprocessing always runs on CPU, in the python backend
    pixels = [3, v.image_size, v.image_size]
    clips = [a.num_clips, 1, a.num_mel_bins, a.target_frames]
    _write_python_model(
        repo, "image_preprocess", "image_preprocess",
        model_config("image_preprocess", [("IMAGE", "TYPE_STRING", [1])], [("PIXELS", "TYPE_FP32", pixels)], pre,
                     execution_env=settings.execution_env),
        {"vision": dataclasses.asdict(v), "max_pixels": settings.max_image_pixels},
    )
    _write_python_model(
        repo, "audio_preprocess", "audio_preprocess",
        model_config("audio_preprocess", [("AUDIO", "TYPE_STRING", [1])], [("CLIPS", "TYPE_FP32", clips)], pre,
                     execution_env=settings.execution_env),
        {"audio": dataclasses.asdict(a), "max_seconds": settings.max_audio_seconds, "torch_threads": 1},
    )
    embeds = [cfg.vision_qformer.num_queries, cfg.llm.hidden]
    batch = settings.encoders.max_batch_size
    for modality, (name, data_in, encoder, qformer) in EMBEDDING_MODELS.items():
        pre_model, pre_out = f"{modality}_preprocess", {"image": "PIXELS", "audio": "CLIPS"}[modality]
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        steps = [
            (pre_model, {data_in: data_in}, {pre_out: "preprocessed"}),
            (encoder, {pre_out: "preprocessed"}, {"FEATURES": "features"}),
            (qformer, {"FEATURES": "features"}, {"EMBEDS": "EMBEDS"}),
        ]
        config = ensemble_config(name, [(data_in, "TYPE_STRING", [1])], [("EMBEDS", "TYPE_FP32", embeds)], steps, batch)
        (repo / name / "config.pbtxt").write_text(config)


def _write_fused_embeds(repo: Path, model: BuboGPT, settings: RepositorySettings) -> None:
    """image_embed / audio_embed as one python model each, holding its two networks' ONNX files
    (exported by `_export_network(..., standalone=False)` into REPO/network/1/, moved in here)."""
    cfg = model.config
    embeds = [cfg.vision_qformer.num_queries, cfg.llm.hidden]
    modality_settings = {
        "image": {"vision": dataclasses.asdict(cfg.vision), "max_pixels": settings.max_image_pixels},
        "audio": {"audio": dataclasses.asdict(cfg.audio), "max_seconds": settings.max_audio_seconds, "torch_threads": 1},
    }
    for modality, (name, data_in, encoder, qformer) in EMBEDDING_MODELS.items():
        version = repo / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        for network in (encoder, qformer):
            (repo / network / "1").rename(version / network)
            shutil.rmtree(repo / network)
        _write_python_model(
            repo, name, "fused_embed",
            model_config(name, [(data_in, "TYPE_STRING", [1])], [("EMBEDS", "TYPE_FP32", embeds)], settings.encoders,
                         device=settings.device, execution_env=settings.execution_env),
            {"modality": modality, **modality_settings[modality], "networks": [encoder, qformer],
             "intra_op_threads": settings.intra_op_threads, "allow_spinning": settings.allow_spinning},
        )


def _write_grounding(repo: Path, pipeline, settings: RepositorySettings) -> None:
    cfg = pipeline.config
    tagger_size = pipeline.tagger.config.image_size
    sam_size = pipeline.segmenter_encoder.config.img_size
    batching = dataclasses.replace(settings.preprocess, max_batch_size=8)
    _write_python_model(
        repo, "grounding_preprocess", "grounding_preprocess",
        model_config(
            "grounding_preprocess", [("IMAGE", "TYPE_STRING", [1])],
            [("TAGGER_PIXELS", "TYPE_FP32", [3, tagger_size, tagger_size]), ("DETECTOR_PIXELS", "TYPE_FP32", [3, -1, -1]),
             ("SAM_PIXELS", "TYPE_FP32", [3, sam_size, sam_size]), ("SIZES", "TYPE_INT32", [4])],
            batching, execution_env=settings.execution_env,
        ),
        {"max_pixels": settings.max_image_pixels, "tagger": cfg.tagger, "detector": cfg.detector, "segmenter": cfg.segmenter,
         "torch_threads": 1},
    )
    embeddings = [pipeline.segmenter_encoder.config.prompt_embed_dim, pipeline.segmenter_encoder.config.embed_size, pipeline.segmenter_encoder.config.embed_size]
    outputs = [("TAGS", "TYPE_STRING", [-1]), ("LABELS", "TYPE_STRING", [-1]), ("SCORES", "TYPE_FP32", [-1]),
               ("BOXES", "TYPE_FP32", [-1, 4]), ("MASKS", "TYPE_STRING", [-1])]
    _write_python_model(
        repo, "grounding_postprocess", "grounding_postprocess",
        model_config(
            "grounding_postprocess",
            [("PROBS", "TYPE_FP32", [len(pipeline.tag_list)]), ("DETECTOR_PIXELS", "TYPE_FP32", [3, -1, -1]),
             ("EMBEDDINGS", "TYPE_FP32", embeddings), ("SIZES", "TYPE_INT32", [4])],
            outputs, batching, execution_env=settings.execution_env,
        ),
        {"config": dataclasses.asdict(cfg), "tag_list": pipeline.tag_list,
         "thresholds": [float(t) for t in pipeline.thresholds.tolist()], "deleted_tags": list(pipeline.deleted_tags)},
    )
    text_dir = Path(pipeline.tokenizer.name_or_path)
    shutil.copytree(text_dir, repo / "grounding_postprocess" / "1" / "text_encoder")
    (repo / "grounding" / "1").mkdir(parents=True, exist_ok=True)
    steps = [
        ("grounding_preprocess", {"IMAGE": "IMAGE"},
         {"TAGGER_PIXELS": "tagger_pixels", "DETECTOR_PIXELS": "detector_pixels", "SAM_PIXELS": "sam_pixels", "SIZES": "sizes"}),
        ("tagger", {"PIXELS": "tagger_pixels"}, {"PROBS": "probs"}),
        ("sam_image_encoder", {"PIXELS": "sam_pixels"}, {"EMBEDDINGS": "embeddings"}),
        ("grounding_postprocess",
         {"PROBS": "probs", "DETECTOR_PIXELS": "detector_pixels", "EMBEDDINGS": "embeddings", "SIZES": "sizes"},
         {name: name for name, _, _ in outputs}),
    ]
    config = ensemble_config("grounding", [("IMAGE", "TYPE_STRING", [1])], outputs, steps, max_batch_size=4)
    (repo / "grounding" / "config.pbtxt").write_text(config)


def print_summary(results: list[ParityResult]) -> None:
    table = Table(title="export parity (max |torch - exported| / max |torch|)")
    for column in ("model", "backend", "batch", "relative error", "tolerance", "ok"):
        table.add_column(column)
    for r in results:
        table.add_row(r.name, r.backend, str(r.batch), f"{r.relative_error:.2e}", f"{r.tolerance:.0e}", "yes" if r.ok else "NO")
    Console(stderr=True).print(table)


def export_model_dir(model_dir: str | Path, out: str | Path, backend: str = "onnx", *, grounding: bool = True,
                     overwrite: bool = False, update: bool = False, intra_op_threads: int = 0,
                     fused_embeds: bool | None = None) -> list[ParityResult] | dict[str, int]:
    """A model directory (our format) -> a Triton repository: what `bubo export` and `bubo serve` (its cached
    repository) both do. `grounding` adds the grounding networks when the directory has them; `update`
    adds new versions to an existing repository instead (`update_repository`, in the repository's layout).
    `fused_embeds` None: fused on CPU, an ensemble for TensorRT."""
    from bubogpt.grounding.pipeline import has_grounding, load_grounding
    from bubogpt.weights import load_model
    from export.triton_install import model_env_dir

    env = model_env_dir()
    settings = RepositorySettings(device="cuda" if backend == "tensorrt" else "cpu",
                                  execution_env=str(env) if env.is_dir() else None, intra_op_threads=intra_op_threads,
                                  fused_embeds=fused_embeds)
    model = load_model(model_dir)
    pipeline = load_grounding(model_dir) if grounding and has_grounding(model_dir) else None
    if update:
        return update_repository(out, model, settings=settings, grounding=pipeline, release=True)
    return write_repository(out, model, backend=backend, settings=settings, overwrite=overwrite, grounding=pipeline, release=True)
