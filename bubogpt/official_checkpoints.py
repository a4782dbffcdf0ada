"""Loading the official checkpoint files into our networks, by explicit key maps.

Files and what we take from them (see ARCHITECTURE.md for where users get them):

| file                             | container              | loaded into                                       |
| -------------------------------- | ---------------------- | ------------------------------------------------- |
| `eva_vit_g.pth`                  | flat state dict        | `EvaViT` trunk (first `depth` of the 40 blocks)   |
| `blip2_pretrained_flant5xxl.pth` | `{"model": state}`     | `EvaViT.ln_vision` + the vision `QFormer`          |
| `imagebind_huge.pth`             | flat state dict        | `ImageBindAudioEncoder`                           |
| `bubogpt_7b.pth`                 | `{"model": state, ...}`| audio `QFormer`, audio/vision projections (and the vision `QFormer` if the file has it) |

Every loader is strict, unlike the official code (which calls `load_state_dict(strict=False)` and so
silently keeps random weights when a name does not match). A load fails with `CheckpointError` naming:
  - missing: parameters of ours that the file should fill but does not,
  - unexpected: keys of the file that are neither mapped nor in the documented ignore list,
  - mis-shaped: mapped keys whose shape differs from our parameter (usually a config mismatch).
Tensors are cast to the target parameter's dtype (the official files are partly fp16).

Key maps are plain `{official key: our parameter name}` dicts, built by the `*_key_map` functions, so
they can be printed and reviewed. Keys we skip on purpose are regexes (full match) with the reason.

`read_state` (the one `torch.load` wrapper) and `apply_key_map` (the one strict copy) also serve the
grounding families, whose key maps live beside their networks: `bubogpt.grounding.ram.checkpoint`
(`ram_swin_large_14m.pth`), `...grounding_dino.checkpoint` (`groundingdino_swint_ogc.pth`) and
`...sam.checkpoint` (`sam_vit_h_4b8939.pth`).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.audio_encoder import ImageBindAudioEncoder
from bubogpt.config import AudioEncoderConfig, QFormerConfig, VisionEncoderConfig
from bubogpt.qformer import QFormer
from bubogpt.vision_encoder import EvaViT

log = logging.getLogger(__name__)

StateDict = Mapping[str, Any]
Checkpoint = Union[str, os.PathLike, StateDict]
# (regex over the official key, full match; why the key is skipped)
IgnoreRule = tuple[str, str]


class CheckpointError(ValueError):
    """A checkpoint does not match the network it is loaded into.

    The message is one line (the CLI prints it as the user error); it names the offending keys, the
    first MAX_NAMED of each kind. `problems` holds every one: kind -> descriptions.
    """

    def __init__(self, message: str, problems: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(message)
        self.problems = {kind: list(items) for kind, items in (problems or {}).items()}


MAX_NAMED = 10  # offending keys named per kind in an error message (a wrong preset mis-shapes hundreds)


@dataclass
class LoadReport:
    """What a loader did: `loaded` maps our (module-prefixed) parameter names to official keys;
    `ignored` lists the file's keys skipped on purpose, `checked` those verified but not loaded."""

    source: str
    loaded: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)


# A key verified, not loaded: the value it must have, or the official key whose value it must equal
# (buffers derived from the config, aliases of shared weights).
CheckedKeys = Mapping[str, Union[torch.Tensor, str]]


# --------------------------------------------------------------------------------------------------
# Key maps: official key -> our parameter name (relative to the target module).
# --------------------------------------------------------------------------------------------------

_EVA_BLOCK_TENSORS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",  # no fused bias in EVA: q_bias and v_bias below, k bias is zero
    "attn.q_bias",
    "attn.v_bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)


def eva_vit_key_map(config: VisionEncoderConfig) -> dict[str, str]:
    """`eva_vit_g.pth` -> `EvaViT` (all but `ln_vision`, which comes from the BLIP-2 file)."""
    key_map = {
        "patch_embed.proj.weight": "patch_embed.weight",
        "patch_embed.proj.bias": "patch_embed.bias",
        "cls_token": "cls_token",
        "pos_embed": "pos_embed",
    }
    for i in range(config.depth):
        for name in _EVA_BLOCK_TENSORS:  # our block mirrors EVA's names one to one
            key_map[f"blocks.{i}.{name}"] = f"blocks.{i}.{name}"
    return key_map


EVA_VIT_IGNORED: tuple[IgnoreRule, ...] = (
    # Blocks at index >= depth are added per file (see load_eva_vit_checkpoint): BLIP-2 builds 39 blocks
    # and loads the 40-block EVA-g file with strict=False, i.e. it drops the last block.
    (r"(norm|fc_norm|head)\.(weight|bias)", "EVA's final norm / pooled norm / classifier head: BLIP-2 builds the trunk without them"),
)

# BERT attention sub-modules of a Q-Former layer -> ours.
_QFORMER_ATTENTION_TENSORS = (
    ("self.query", "q_proj"),
    ("self.key", "k_proj"),
    ("self.value", "v_proj"),
    ("output.dense", "out_proj"),
    ("output.LayerNorm", "norm"),
)
# The queries' FFN (not the text FFN `intermediate` / `output`) -> ours.
_QFORMER_QUERY_FFN_TENSORS = (
    ("intermediate_query.dense", "mlp.fc1"),
    ("output_query.dense", "mlp.fc2"),
    ("output_query.LayerNorm", "mlp.norm"),
)


def qformer_key_map(config: QFormerConfig, source_prefix: str = "") -> dict[str, str]:
    """LAVIS Q-Former (`{prefix}query_tokens`, `{prefix}Qformer.bert.*`) -> `QFormer`, query path only.

    `source_prefix` is "" in the BLIP-2 file and "multimodal_joiner.modality_qformers.<modality>."
    in BuboGPT's file.
    """
    bert = f"{source_prefix}Qformer.bert"
    key_map = {
        f"{source_prefix}query_tokens": "query_tokens",
        f"{bert}.embeddings.LayerNorm.weight": "embed_norm.weight",
        f"{bert}.embeddings.LayerNorm.bias": "embed_norm.bias",
    }
    for i in range(config.num_layers):
        src, dst = f"{bert}.encoder.layer.{i}", f"layers.{i}"
        attentions = [("attention", "self_attn")]
        if i % config.cross_attention_freq == 0:
            attentions.append(("crossattention", "cross_attn"))
        for official, ours in attentions:
            for sub_official, sub_ours in _QFORMER_ATTENTION_TENSORS:
                for p in ("weight", "bias"):
                    key_map[f"{src}.{official}.{sub_official}.{p}"] = f"{dst}.{ours}.{sub_ours}.{p}"
        for sub_official, sub_ours in _QFORMER_QUERY_FFN_TENSORS:
            for p in ("weight", "bias"):
                key_map[f"{src}.{sub_official}.{p}"] = f"{dst}.{sub_ours}.{p}"
    return key_map


def qformer_text_only_rules(source_prefix: str = "") -> tuple[IgnoreRule, ...]:
    """The text-side parts of a LAVIS Q-Former, never used when only queries go through it."""
    p = re.escape(source_prefix) + r"Qformer\."
    return (
        (p + r"bert\.embeddings\.(word_embeddings|position_embeddings)\.weight", "text token/position embeddings"),
        (p + r"bert\.embeddings\.position_ids", "text position ids (buffer)"),
        (p + r"bert\.encoder\.layer\.\d+\.intermediate\.dense\.(weight|bias)", "text FFN"),
        (p + r"bert\.encoder\.layer\.\d+\.output\.(dense|LayerNorm)\.(weight|bias)", "text FFN"),
        (p + r"cls\..*", "BERT LM head (text generation loss)"),
    )


BLIP2_IGNORED: tuple[IgnoreRule, ...] = (
    *qformer_text_only_rules(),
    (r"visual_encoder\..*", "frozen ViT, if present: BLIP-2/BuboGPT take EVA from eva_vit_g.pth"),
    (r"(vision_proj|text_proj|itm_head)\.(weight|bias)", "BLIP-2 stage-1 contrastive / matching heads"),
    (r"temp", "BLIP-2 contrastive temperature"),
    (r"t5_proj\.(weight|bias)|t5_model\..*", "BLIP-2 FlanT5 stage-2 parts"),
)


def blip2_key_map(vision: VisionEncoderConfig, qformer: QFormerConfig) -> dict[str, str]:
    """`blip2_pretrained_flant5xxl.pth["model"]` -> `vision_encoder.ln_vision.*` and `vision_qformer.*`."""
    key_map = {
        "ln_vision.weight": "vision_encoder.ln_vision.weight",
        "ln_vision.bias": "vision_encoder.ln_vision.bias",
    }
    key_map.update(_prefixed(qformer_key_map(qformer), "vision_qformer"))
    return key_map


def imagebind_audio_key_map(config: AudioEncoderConfig) -> dict[str, str]:
    """`imagebind_huge.pth` audio parts -> `ImageBindAudioEncoder`."""
    pre = "modality_preprocessors.audio"
    key_map = {
        # PatchEmbedGeneric keeps a one-layer stem as `proj` itself (not `proj.0`).
        f"{pre}.rgbt_stem.proj.weight": "patch_embed.weight",
        f"{pre}.rgbt_stem.norm_layer.weight": "patch_norm.weight",
        f"{pre}.rgbt_stem.norm_layer.bias": "patch_norm.bias",
        f"{pre}.cls_token": "cls_token",
        f"{pre}.pos_embedding_helper.pos_embed": "pos_embed",
        # nn.Sequential(Normalize, LearnableLogitScaling(learnable=False)): index 1 holds the buffer.
        "modality_postprocessors.audio.1.log_logit_scale": "log_logit_scale",
    }
    for i in range(config.depth):
        src, dst = f"modality_trunks.audio.blocks.{i}", f"blocks.{i}"
        key_map.update(
            {
                f"{src}.norm_1.weight": f"{dst}.norm1.weight",
                f"{src}.norm_1.bias": f"{dst}.norm1.bias",
                f"{src}.attn.in_proj_weight": f"{dst}.attn.in_proj.weight",
                f"{src}.attn.in_proj_bias": f"{dst}.attn.in_proj.bias",
                f"{src}.attn.bias_k": f"{dst}.attn.bias_k",
                f"{src}.attn.bias_v": f"{dst}.attn.bias_v",
                f"{src}.attn.out_proj.weight": f"{dst}.attn.out_proj.weight",
                f"{src}.attn.out_proj.bias": f"{dst}.attn.out_proj.bias",
                f"{src}.norm_2.weight": f"{dst}.norm2.weight",
                f"{src}.norm_2.bias": f"{dst}.norm2.bias",
                f"{src}.mlp.fc1.weight": f"{dst}.mlp.fc1.weight",
                f"{src}.mlp.fc1.bias": f"{dst}.mlp.fc1.bias",
                f"{src}.mlp.fc2.weight": f"{dst}.mlp.fc2.weight",
                f"{src}.mlp.fc2.bias": f"{dst}.mlp.fc2.bias",
            }
        )
    return key_map


IMAGEBIND_IGNORED: tuple[IgnoreRule, ...] = (
    (
        r"modality_(preprocessors|trunks|heads|postprocessors)\.(vision|text|depth|thermal|imu)\..*",
        "ImageBind's other modalities",
    ),
    (r"modality_heads\.audio\..*", "ImageBind's audio head: BuboGPT runs with_bind_head=False"),
)

_BUBO_QFORMER_PREFIX = "multimodal_joiner.modality_qformers.{modality}."
_BUBO_PROJ_PREFIX = "multimodal_joiner.modality_post_projectors.{modality}.fc."


def bubogpt_key_map(
    audio_qformer: QFormerConfig, vision_qformer: QFormerConfig | None = None
) -> dict[str, str]:
    """`bubogpt_7b.pth["model"]` -> `audio_qformer.*`, `audio_proj.*`, `vision_proj.*` (+ `vision_qformer.*`).

    The projections are ImageBindJoiner's `LinearProjector`s (`fc` = nn.Linear(768, llm hidden)).
    """
    key_map = _prefixed(
        qformer_key_map(audio_qformer, _BUBO_QFORMER_PREFIX.format(modality="audio")), "audio_qformer"
    )
    if vision_qformer is not None:
        key_map.update(
            _prefixed(
                qformer_key_map(vision_qformer, _BUBO_QFORMER_PREFIX.format(modality="vision")),
                "vision_qformer",
            )
        )
    for modality in ("audio", "vision"):
        for p in ("weight", "bias"):
            key_map[_BUBO_PROJ_PREFIX.format(modality=modality) + p] = f"{modality}_proj.{p}"
    return key_map


BUBOGPT_IGNORED: tuple[IgnoreRule, ...] = (
    # The audio Q-Former was built as a full BertLMHeadModel and trained unfrozen, so its text parts
    # were saved too; the vision one keeps at least its position_ids buffer.
    *qformer_text_only_rules(_BUBO_QFORMER_PREFIX.format(modality="audio")),
    *qformer_text_only_rules(_BUBO_QFORMER_PREFIX.format(modality="vision")),
    # The runner saves every buffer (only frozen *parameters* are dropped):
    (
        r"multimodal_encoder\.modality_postprocessors\.audio\.1\.log_logit_scale",
        "ImageBind audio scale buffer (loaded from imagebind_huge.pth)",
    ),
    (r"llama_model\..*\.rotary_emb\.inv_freq", "Vicuna rotary buffer (the LLM comes from the Vicuna weights)"),
    (r"llama_model\..*\.(SCB|weight_format)", "bitsandbytes 8-bit LLM state (the LLM comes from the Vicuna weights)"),
)


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def load_checkpoint_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """torch.load on CPU with `weights_only=True` (tensors, dicts, lists, numbers, strings only).

    The official files are plain dicts of tensors (LAVIS/BuboGPT add "optimizer", "config", "scaler",
    "epoch", all plain data), which weights_only accepts. If a file holds other pickled objects, it
    is refused unless `allow_pickle=True` (full unpickling: only for files you trust).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: not loadable with weights_only=True ({err}). If you trust the file, "
                "pass allow_pickle=True to unpickle it fully."
            ) from err
        log.warning("%s: weights_only load failed (%s); unpickling fully (allow_pickle=True)", path, err)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_eva_vit_checkpoint(
    encoder: EvaViT,
    checkpoint: Checkpoint,
    *,
    extra_ignore: Sequence[IgnoreRule] = (),
    allow_pickle: bool = False,
) -> LoadReport:
    """Fill the EVA trunk (everything but `ln_vision`) from `eva_vit_g.pth`.

    If the file's position grid differs from ours it is resized like BLIP-2's `interpolate_pos_embed`
    (bicubic over the patch grid, class token kept).
    """
    name, state = read_state(checkpoint, "eva_vit_g.pth", layout="flat", allow_pickle=allow_pickle)
    state = dict(state)
    depth = encoder.config.depth
    dropped = sorted(
        {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)) and int(m.group(1)) >= depth}
    )
    ignore = list(EVA_VIT_IGNORED) + list(extra_ignore)
    if dropped:
        log.info("%s: dropping blocks %s (BLIP-2 keeps the first %d)", name, dropped, depth)
        ignore += [(rf"blocks\.{i}\..*", f"block {i} >= depth {depth}") for i in dropped]
    if "pos_embed" in state and torch.is_tensor(state["pos_embed"]):
        state["pos_embed"] = _resize_eva_pos_embed(state["pos_embed"], encoder, name)
    return apply_key_map(
        state,
        _prefixed(eva_vit_key_map(encoder.config), "vision_encoder"),
        {"vision_encoder": encoder},
        ignore,
        scope={"vision_encoder": lambda p: not p.startswith("ln_vision.")},
        source=name,
    )


def load_blip2_checkpoint(
    vision_encoder: EvaViT,
    vision_qformer: QFormer,
    checkpoint: Checkpoint,
    *,
    extra_ignore: Sequence[IgnoreRule] = (),
    allow_pickle: bool = False,
) -> LoadReport:
    """Fill `vision_encoder.ln_vision` and the whole vision Q-Former from `blip2_pretrained_flant5xxl.pth`."""
    name, state = read_state(
        checkpoint, "blip2_pretrained_flant5xxl.pth", layout="wrapped", allow_pickle=allow_pickle
    )
    return apply_key_map(
        state,
        blip2_key_map(vision_encoder.config, vision_qformer.config),
        {"vision_encoder": vision_encoder, "vision_qformer": vision_qformer},
        list(BLIP2_IGNORED) + list(extra_ignore),
        scope={"vision_encoder": lambda p: p.startswith("ln_vision.")},
        source=name,
    )


def load_imagebind_audio_checkpoint(
    audio_encoder: ImageBindAudioEncoder,
    checkpoint: Checkpoint,
    *,
    extra_ignore: Sequence[IgnoreRule] = (),
    allow_pickle: bool = False,
) -> LoadReport:
    """Fill the audio encoder (stem, trunk, logit-scale buffer) from `imagebind_huge.pth`."""
    name, state = read_state(checkpoint, "imagebind_huge.pth", layout="flat", allow_pickle=allow_pickle)
    return apply_key_map(
        state,
        _prefixed(imagebind_audio_key_map(audio_encoder.config), "audio_encoder"),
        {"audio_encoder": audio_encoder},
        list(IMAGEBIND_IGNORED) + list(extra_ignore),
        source=name,
    )


def load_bubogpt_checkpoint(
    vision_qformer: QFormer | None,
    vision_proj: nn.Linear,
    audio_qformer: QFormer,
    audio_proj: nn.Linear,
    checkpoint: Checkpoint,
    *,
    extra_ignore: Sequence[IgnoreRule] = (),
    allow_pickle: bool = False,
) -> LoadReport:
    """Fill the audio Q-Former and both projections from `bubogpt_7b.pth`.

    The vision Q-Former is frozen in BuboGPT's training, so the released file normally lacks it and it
    keeps the BLIP-2 weights. If the file does carry vision Q-Former weights they are loaded (all of
    them, overriding BLIP-2's, as the official `load_state_dict` would); pass `vision_qformer=None`
    only for files without them.
    """
    name, state = read_state(checkpoint, "bubogpt_7b.pth", layout="wrapped", allow_pickle=allow_pickle)
    vision_prefix = _BUBO_QFORMER_PREFIX.format(modality="vision")
    has_vision_qformer = vision_qformer is not None and any(
        k in state for k in qformer_key_map(vision_qformer.config, vision_prefix)
    )
    targets: dict[str, nn.Module] = {
        "audio_qformer": audio_qformer,
        "audio_proj": audio_proj,
        "vision_proj": vision_proj,
    }
    if has_vision_qformer:
        targets["vision_qformer"] = vision_qformer
        log.info("%s: carries vision Q-Former weights; they override the BLIP-2 ones", name)
    return apply_key_map(
        state,
        bubogpt_key_map(audio_qformer.config, vision_qformer.config if has_vision_qformer else None),
        targets,
        list(BUBOGPT_IGNORED) + list(extra_ignore),
        source=name,
    )


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _prefixed(key_map: Mapping[str, str], module_name: str) -> dict[str, str]:
    return {src: f"{module_name}.{dst}" for src, dst in key_map.items()}


def read_state(
    checkpoint: Checkpoint, default_name: str, *, layout: str, allow_pickle: bool = False
) -> tuple[str, StateDict]:
    """A path or an in-memory dict -> (name for messages, the official state dict).

    `layout` is the container of the official file: "flat" (a state dict), "wrapped" (LAVIS's
    `{"model": state, ...}`) or "either" (files released both ways: the state is taken from "model"
    when there is one).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        name, obj = os.fspath(checkpoint), load_checkpoint_file(checkpoint, allow_pickle=allow_pickle)
    elif isinstance(checkpoint, Mapping):
        name, obj = f"{default_name} (in memory)", checkpoint
    else:
        raise CheckpointError(f"{default_name}: expected a path or a dict, got {type(checkpoint).__name__}")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: expected a state dict, got {type(obj).__name__}")
    wrapped = isinstance(obj.get("model"), Mapping)
    if layout == "flat" and wrapped:
        raise CheckpointError(
            f"{name}: this file wraps its weights in {{'model': ...}}, but {default_name} is a flat state "
            "dict in the official release. Is it the right file?"
        )
    if layout == "wrapped" and not wrapped:
        raise CheckpointError(
            f"{name}: expected LAVIS's layout {{'model': state_dict, ...}} as in the official {default_name}"
        )
    return name, (obj["model"] if wrapped and layout != "flat" else obj)


def _resize_eva_pos_embed(pos_embed: torch.Tensor, encoder: EvaViT, name: str) -> torch.Tensor:
    """Bicubic resize of the patch-grid part of EVA's position embedding (BLIP-2's interpolate_pos_embed)."""
    target = encoder.pos_embed
    if pos_embed.ndim != 3 or pos_embed.shape[-1] != target.shape[-1] or pos_embed.shape[1] == target.shape[1]:
        return pos_embed  # equal grids need nothing; other mismatches are reported as mis-shaped
    num_patches = encoder.config.num_patches
    extra = target.shape[1] - num_patches  # the class token
    old_side = math.isqrt(pos_embed.shape[1] - extra)
    new_side = math.isqrt(num_patches)
    if old_side * old_side != pos_embed.shape[1] - extra or new_side * new_side != num_patches:
        raise CheckpointError(
            f"{name}: cannot resize pos_embed {tuple(pos_embed.shape)} to {tuple(target.shape)}: grids are not square"
        )
    log.info("%s: resizing pos_embed grid %dx%d -> %dx%d (bicubic)", name, old_side, old_side, new_side, new_side)
    width = pos_embed.shape[-1]
    pos = pos_embed.float()
    grid = pos[:, extra:].reshape(1, old_side, old_side, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((pos[:, :extra], grid), dim=1)


def apply_key_map(
    state: StateDict,
    key_map: Mapping[str, str],
    targets: Mapping[str, nn.Module],
    ignore: Sequence[IgnoreRule],
    *,
    source: str,
    scope: Mapping[str, Callable[[str], bool]] | None = None,
    checks: CheckedKeys | None = None,
    error: type[CheckpointError] = CheckpointError,
) -> LoadReport:
    """Copy `state[official]` into `targets` for every `official -> "<module>.<param>"` of `key_map`.

    The one strict loader of every official family. `targets` names the modules; the name "" means
    no prefix (a map straight onto one network's own names). `scope` restricts, per module, which of
    its parameters/buffers this file must fill (default all). `checks` are keys verified when present
    and never loaded. Nothing is copied unless the whole map checks out; otherwise `error` (a
    CheckpointError) names every missing, unexpected, mis-shaped and inconsistent key.
    """
    scope = scope or {}
    checks = checks or {}
    wanted: dict[str, torch.Tensor] = {}
    for module_name, module in targets.items():
        in_scope = scope.get(module_name, lambda _: True)
        prefix = f"{module_name}." if module_name else ""
        for param_name, tensor in module.state_dict(keep_vars=True).items():
            if in_scope(param_name):
                wanted[prefix + param_name] = tensor

    stray = sorted(dst for dst in key_map.values() if dst not in wanted)
    if stray:  # a bug in a key map or a module built from another config, not a file problem
        raise error(f"{source}: key map names parameters the target modules lack: {stray}")

    compiled = [(re.compile(pattern), why) for pattern, why in ignore]

    def ignored(key: str) -> bool:
        return any(rx.fullmatch(key) for rx, _ in compiled)

    filled = set(key_map.values())
    missing = [f"{dst} <- official key {src!r}" for src, dst in key_map.items() if src not in state]
    missing += [f"{dst} (no official key maps to it)" for dst in wanted if dst not in filled]
    unexpected = [k for k in state if k not in key_map and k not in checks and not ignored(k)]
    misshaped = []
    for src, dst in key_map.items():
        if src not in state:
            continue
        value = state[src]
        if not torch.is_tensor(value):
            misshaped.append(f"{src} -> {dst}: not a tensor ({type(value).__name__})")
        elif tuple(value.shape) != tuple(wanted[dst].shape):
            misshaped.append(f"{src} -> {dst}: checkpoint {tuple(value.shape)} vs model {tuple(wanted[dst].shape)}")
    inconsistent = []
    for key, expected in checks.items():
        if key not in state:
            continue  # derived buffers and aliases carry nothing of their own: absence is fine
        reference = state.get(expected) if isinstance(expected, str) else expected
        value = state[key]
        if not (
            torch.is_tensor(value) and torch.is_tensor(reference) and value.shape == reference.shape
            and torch.equal(value.to(reference.dtype), reference)
        ):
            what = f"must equal {expected}" if isinstance(expected, str) else "differs from the value the model implies"
            inconsistent.append(f"{key}: {what}")

    problems = {"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped, "inconsistent": inconsistent}
    if any(problems.values()):
        hints = {
            "missing": "our tensors the file does not fill",
            "unexpected": "file keys neither mapped nor in the ignore list",
            "mis-shaped": "is the model built from the right preset?",
            "inconsistent": "buffers and shared-weight aliases, checked not loaded",
        }
        parts = []
        for kind, items in problems.items():
            if items:
                more = f", and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
                parts.append(f"{kind} ({hints[kind]}): " + ", ".join(items[:MAX_NAMED]) + more)
        counts = ", ".join(f"{len(items)} {kind}" for kind, items in problems.items())
        log.debug("%s: every problem:\n%s", source, "\n".join(f"  {k}: {i}" for k, items in problems.items() for i in items))
        raise error(f"{source}: {counts}. " + "; ".join(parts), problems)

    meta = sorted(dst for dst in filled if wanted[dst].is_meta)
    if meta:
        raise error(f"{source}: target tensors are on the meta device; build the model on a real device: {meta[:3]}...")

    report = LoadReport(
        source=source,
        ignored=sorted(k for k in state if k not in key_map and k not in checks),
        checked=sorted(k for k in checks if k in state),
    )
    with torch.no_grad():
        for src, dst in key_map.items():
            target = wanted[dst]
            target.copy_(state[src].to(dtype=target.dtype))
            report.loaded[dst] = src
    log.info(
        "%s: loaded %d tensors, checked %d, ignored %d keys", source, len(report.loaded), len(report.checked),
        len(report.ignored),
    )
    return report
