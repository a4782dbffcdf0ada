"""Official checkpoint loading: synthesized files with the OFFICIAL key names and container layouts.

The key lists below are written from the official module definitions (magic-research/bubogpt:
bubogpt/models/eva_vit.py, bubogpt/models/Qformer.py, imagebind/models/image_bind.py,
imagebind/models/multimodal_preprocessors.py, imagebind/models/transformer.py and the runner's
_save_checkpoint), at `nano` sizes, independently of the loader's key maps. Every tensor gets distinct
random values, and after loading each of our tensors must equal the official tensor that the test's own
name oracle says it comes from.
"""

from __future__ import annotations

import dataclasses

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn

from bubogpt.audio_encoder import ImageBindAudioEncoder
from bubogpt.config import AudioEncoderConfig, QFormerConfig, VisionEncoderConfig, nano
from bubogpt.official_checkpoints import (
    MAX_NAMED,
    CheckpointError,
    load_blip2_checkpoint,
    load_bubogpt_checkpoint,
    load_eva_vit_checkpoint,
    load_imagebind_audio_checkpoint,
)
from bubogpt.qformer import QFormer
from bubogpt.vision_encoder import EvaViT

VOCAB, MAX_POS = 50, 16  # BERT text-side sizes; irrelevant to us, kept small

# ----------------------------------------------------------------------------------------------
# Official state dicts (names and shapes from the official definitions)
# ----------------------------------------------------------------------------------------------


class _Filler:
    """Distinct random values for every tensor, so a tensor in the wrong place cannot pass."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen)


def official_eva_state(cfg: VisionEncoderConfig, num_blocks: int, fill: _Filler) -> dict[str, torch.Tensor]:
    """eva_vit.VisionTransformer(qkv_bias=True, use_abs_pos_emb=True, no rel-pos, no layer scale)."""
    w, m, p = cfg.width, cfg.mlp_dim, cfg.patch_size
    state = {
        "cls_token": fill(1, 1, w),
        "pos_embed": fill(1, cfg.num_tokens, w),
        "patch_embed.proj.weight": fill(w, 3, p, p),
        "patch_embed.proj.bias": fill(w),
    }
    for i in range(num_blocks):
        b = f"blocks.{i}"
        state |= {
            f"{b}.norm1.weight": fill(w),
            f"{b}.norm1.bias": fill(w),
            f"{b}.attn.q_bias": fill(w),
            f"{b}.attn.v_bias": fill(w),
            f"{b}.attn.qkv.weight": fill(3 * w, w),
            f"{b}.attn.proj.weight": fill(w, w),
            f"{b}.attn.proj.bias": fill(w),
            f"{b}.norm2.weight": fill(w),
            f"{b}.norm2.bias": fill(w),
            f"{b}.mlp.fc1.weight": fill(m, w),
            f"{b}.mlp.fc1.bias": fill(m),
            f"{b}.mlp.fc2.weight": fill(w, m),
            f"{b}.mlp.fc2.bias": fill(w),
        }
    return state


def _bert_attention(prefix: str, h: int, kv: int, fill: _Filler) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.self.query.weight": fill(h, h),
        f"{prefix}.self.query.bias": fill(h),
        f"{prefix}.self.key.weight": fill(h, kv),
        f"{prefix}.self.key.bias": fill(h),
        f"{prefix}.self.value.weight": fill(h, kv),
        f"{prefix}.self.value.bias": fill(h),
        f"{prefix}.output.dense.weight": fill(h, h),
        f"{prefix}.output.dense.bias": fill(h),
        f"{prefix}.output.LayerNorm.weight": fill(h),
        f"{prefix}.output.LayerNorm.bias": fill(h),
    }


def official_qformer_state(
    cfg: QFormerConfig, fill: _Filler, prefix: str = "", text_parts: bool = True
) -> dict[str, torch.Tensor]:
    """LAVIS BertLMHeadModel (+ query_tokens) as `SequenceGenericQFormer` / `Blip2Qformer` hold it."""
    h, i_dim = cfg.hidden, cfg.intermediate
    bert = f"{prefix}Qformer.bert"
    state = {
        f"{prefix}query_tokens": fill(1, cfg.num_queries, h),
        f"{bert}.embeddings.LayerNorm.weight": fill(h),
        f"{bert}.embeddings.LayerNorm.bias": fill(h),
        f"{bert}.embeddings.position_ids": torch.arange(MAX_POS).expand(1, -1),
    }
    if text_parts:
        state |= {
            f"{bert}.embeddings.word_embeddings.weight": fill(VOCAB, h),
            f"{bert}.embeddings.position_embeddings.weight": fill(MAX_POS, h),
        }
    for i in range(cfg.num_layers):
        layer = f"{bert}.encoder.layer.{i}"
        state |= _bert_attention(f"{layer}.attention", h, h, fill)
        if i % cfg.cross_attention_freq == 0:
            state |= _bert_attention(f"{layer}.crossattention", h, cfg.encoder_width, fill)
        ffns = ["_query", ""] if text_parts else ["_query"]
        for suffix in ffns:
            state |= {
                f"{layer}.intermediate{suffix}.dense.weight": fill(i_dim, h),
                f"{layer}.intermediate{suffix}.dense.bias": fill(i_dim),
                f"{layer}.output{suffix}.dense.weight": fill(h, i_dim),
                f"{layer}.output{suffix}.dense.bias": fill(h),
                f"{layer}.output{suffix}.LayerNorm.weight": fill(h),
                f"{layer}.output{suffix}.LayerNorm.bias": fill(h),
            }
    if text_parts:
        bias = fill(VOCAB)
        state |= {
            f"{prefix}Qformer.cls.predictions.bias": bias,
            f"{prefix}Qformer.cls.predictions.transform.dense.weight": fill(h, h),
            f"{prefix}Qformer.cls.predictions.transform.dense.bias": fill(h),
            f"{prefix}Qformer.cls.predictions.transform.LayerNorm.weight": fill(h),
            f"{prefix}Qformer.cls.predictions.transform.LayerNorm.bias": fill(h),
            f"{prefix}Qformer.cls.predictions.decoder.weight": state[f"{bert}.embeddings.word_embeddings.weight"],
            f"{prefix}Qformer.cls.predictions.decoder.bias": bias,
        }
    return state


def official_blip2_state(vision: VisionEncoderConfig, qformer: QFormerConfig, fill: _Filler) -> dict:
    """Blip2Qformer checkpoint: {"model": state}; the frozen ViT was not saved, the heads were."""
    state = {"ln_vision.weight": fill(vision.width), "ln_vision.bias": fill(vision.width)}
    state |= official_qformer_state(qformer, fill)
    state |= {
        "vision_proj.weight": fill(8, qformer.hidden),
        "vision_proj.bias": fill(8),
        "text_proj.weight": fill(8, qformer.hidden),
        "text_proj.bias": fill(8),
        "itm_head.weight": fill(2, qformer.hidden),
        "itm_head.bias": fill(2),
        "temp": torch.tensor(0.07),
    }
    return {"model": state, "config": {"arch": "blip2"}, "epoch": 9}


def official_imagebind_state(cfg: AudioEncoderConfig, fill: _Filler) -> dict[str, torch.Tensor]:
    """imagebind_huge.pth: flat; audio parts plus a sample of every other modality and the heads."""
    w, m, p = cfg.width, cfg.mlp_dim, cfg.patch_size
    pre, trunk = "modality_preprocessors.audio", "modality_trunks.audio"
    state = {
        f"{pre}.cls_token": fill(1, 1, w),
        f"{pre}.rgbt_stem.proj.weight": fill(w, 1, p, p),  # single-layer stem: `proj` itself
        f"{pre}.rgbt_stem.norm_layer.weight": fill(w),
        f"{pre}.rgbt_stem.norm_layer.bias": fill(w),
        f"{pre}.pos_embedding_helper.pos_embed": fill(1, cfg.num_tokens, w),
        "modality_postprocessors.audio.1.log_logit_scale": torch.tensor(2.9957),
    }
    for i in range(cfg.depth):
        b = f"{trunk}.blocks.{i}"
        state |= {
            f"{b}.attn.in_proj_weight": fill(3 * w, w),
            f"{b}.attn.in_proj_bias": fill(3 * w),
            f"{b}.attn.bias_k": fill(1, 1, w),
            f"{b}.attn.bias_v": fill(1, 1, w),
            f"{b}.attn.out_proj.weight": fill(w, w),
            f"{b}.attn.out_proj.bias": fill(w),
            f"{b}.norm_1.weight": fill(w),
            f"{b}.norm_1.bias": fill(w),
            f"{b}.mlp.fc1.weight": fill(m, w),
            f"{b}.mlp.fc1.bias": fill(m),
            f"{b}.mlp.fc2.weight": fill(w, m),
            f"{b}.mlp.fc2.bias": fill(w),
            f"{b}.norm_2.weight": fill(w),
            f"{b}.norm_2.bias": fill(w),
        }
    state |= {  # the ignored rest (a sample per kind)
        "modality_preprocessors.vision.cls_token": fill(1, 1, 8),
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": fill(8, 3, 2, 4, 4),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": fill(1, 5, 8),
        "modality_preprocessors.text.token_embedding.weight": fill(10, 8),
        "modality_preprocessors.text.mask": fill(4, 4),
        "modality_preprocessors.depth.depth_stem.proj.weight": fill(8, 1, 4, 4),
        "modality_preprocessors.thermal.rgbt_stem.norm_layer.weight": fill(8),
        "modality_preprocessors.imu.imu_stem.proj.weight": fill(8, 48),
        "modality_trunks.vision.pre_transformer_layer.0.weight": fill(8),
        "modality_trunks.vision.blocks.0.attn.in_proj_weight": fill(24, 8),
        "modality_trunks.text.blocks.0.mlp.fc1.weight": fill(32, 8),
        "modality_trunks.imu.blocks.0.attn.bias_k": fill(1, 1, 8),
        "modality_heads.vision.0.weight": fill(8),
        "modality_heads.vision.2.weight": fill(4, 8),
        "modality_heads.text.proj.1.weight": fill(4, 8),
        "modality_heads.audio.0.weight": fill(w),
        "modality_heads.audio.0.bias": fill(w),
        "modality_heads.audio.2.weight": fill(4, w),
        "modality_heads.imu.3.weight": fill(4, 8),
        "modality_postprocessors.text.1.log_logit_scale": torch.tensor(2.65),
        "modality_postprocessors.depth.1.log_logit_scale": torch.tensor(1.6),
    }
    return state


JOINER_Q = "multimodal_joiner.modality_qformers.{}."
JOINER_P = "multimodal_joiner.modality_post_projectors.{}.fc."


def official_bubogpt_state(config, fill: _Filler, with_vision_qformer: bool = False) -> dict:
    """MMGPT4 stage checkpoint after runner._save_checkpoint: trainable parameters plus every buffer."""
    llm = config.llm.hidden
    # audio Q-Former: built as a full BertLMHeadModel and trained, so the text parts are there too
    state = official_qformer_state(config.audio_qformer, fill, JOINER_Q.format("audio"), text_parts=True)
    if with_vision_qformer:  # a file where the vision Q-Former was trainable (text parts removed at load)
        state |= official_qformer_state(config.vision_qformer, fill, JOINER_Q.format("vision"), text_parts=False)
    else:  # frozen: only its buffer survives
        state[JOINER_Q.format("vision") + "Qformer.bert.embeddings.position_ids"] = torch.arange(MAX_POS)[None]
    for modality, hidden in (("audio", config.audio_qformer.hidden), ("vision", config.vision_qformer.hidden)):
        state[JOINER_P.format(modality) + "weight"] = fill(llm, hidden)
        state[JOINER_P.format(modality) + "bias"] = fill(llm)
    state["multimodal_encoder.modality_postprocessors.audio.1.log_logit_scale"] = torch.tensor(2.9957)
    state["llama_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = fill(16)
    return {"model": state, "optimizer": {"state": {}, "param_groups": []}, "config": {"run": {}}, "epoch": 3}


# ----------------------------------------------------------------------------------------------
# Name oracles: official key -> our parameter (None: ignored on purpose). Written from the
# module structure, independently of the loader's tables.
# ----------------------------------------------------------------------------------------------


def _rewrite(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def eva_oracle(depth: int) -> Callable[[str], str | None]:
    def oracle(key: str) -> str | None:
        if m := re.match(r"blocks\.(\d+)\.", key):
            return key if int(m.group(1)) < depth else None
        return _rewrite([(r"patch_embed\.proj\.(weight|bias)", r"patch_embed.\1"), (r"cls_token|pos_embed", r"\g<0>")], key)

    return oracle


def qformer_oracle(prefix: str) -> Callable[[str], str | None]:
    p = re.escape(prefix)
    layer = p + r"Qformer\.bert\.encoder\.layer\.(\d+)\."
    rules = [(p + r"query_tokens", "query_tokens"), (p + r"Qformer\.bert\.embeddings\.LayerNorm\.(\w+)", r"embed_norm.\1")]
    for official, ours in (("attention", "self_attn"), ("crossattention", "cross_attn")):
        rules += [
            (layer + official + r"\.self\.query\.(\w+)", rf"layers.\1.{ours}.q_proj.\2"),
            (layer + official + r"\.self\.key\.(\w+)", rf"layers.\1.{ours}.k_proj.\2"),
            (layer + official + r"\.self\.value\.(\w+)", rf"layers.\1.{ours}.v_proj.\2"),
            (layer + official + r"\.output\.dense\.(\w+)", rf"layers.\1.{ours}.out_proj.\2"),
            (layer + official + r"\.output\.LayerNorm\.(\w+)", rf"layers.\1.{ours}.norm.\2"),
        ]
    rules += [
        (layer + r"intermediate_query\.dense\.(\w+)", r"layers.\1.mlp.fc1.\2"),
        (layer + r"output_query\.dense\.(\w+)", r"layers.\1.mlp.fc2.\2"),
        (layer + r"output_query\.LayerNorm\.(\w+)", r"layers.\1.mlp.norm.\2"),
    ]
    return lambda key: _rewrite(rules, key)


def imagebind_oracle(key: str) -> str | None:
    pre = r"modality_preprocessors\.audio\."
    return _rewrite(
        [
            (pre + r"cls_token", "cls_token"),
            (pre + r"rgbt_stem\.proj\.weight", "patch_embed.weight"),
            (pre + r"rgbt_stem\.norm_layer\.(\w+)", r"patch_norm.\1"),
            (pre + r"pos_embedding_helper\.pos_embed", "pos_embed"),
            (r"modality_postprocessors\.audio\.1\.log_logit_scale", "log_logit_scale"),
            (r"modality_trunks\.audio\.blocks\.(\d+)\.attn\.in_proj_(weight|bias)", r"blocks.\1.attn.in_proj.\2"),
            (r"modality_trunks\.audio\.blocks\.(\d+)\.attn\.(bias_k|bias_v|out_proj\.\w+)", r"blocks.\1.attn.\2"),
            (r"modality_trunks\.audio\.blocks\.(\d+)\.norm_(\d)\.(\w+)", r"blocks.\1.norm\2.\3"),
            (r"modality_trunks\.audio\.blocks\.(\d+)\.mlp\.(fc\d\.\w+)", r"blocks.\1.mlp.\2"),
        ],
        key,
    )


def assert_every_tensor_landed(
    state: dict[str, torch.Tensor],
    oracle: Callable[[str], str | None],
    module: nn.Module,
    *,
    skip: Callable[[str], bool] = lambda _: False,
) -> None:
    """Each official key the oracle maps equals our tensor; each of our tensors (but `skip`) was filled."""
    ours = module.state_dict()
    filled = set()
    for key, value in state.items():
        target = oracle(key)
        if target is None:
            continue
        assert target in ours, f"{key} -> {target}: no such tensor in {type(module).__name__}"
        torch.testing.assert_close(ours[target], value.to(ours[target].dtype), rtol=0, atol=0, msg=f"{key} -> {target}")
        filled.add(target)
    unfilled = [name for name in ours if name not in filled and not skip(name)]
    assert not unfilled, f"not filled: {unfilled}"


# ----------------------------------------------------------------------------------------------
# Round trips through files in the official layout
# ----------------------------------------------------------------------------------------------


def test_eva_vit_file_loads_every_tensor(tmp_path) -> None:
    cfg = nano().vision
    state = official_eva_state(cfg, num_blocks=cfg.depth + 1, fill=_Filler(0))  # the file has one block more
    path = tmp_path / "eva_vit_g.pth"
    torch.save({k: v.half() for k, v in state.items()}, path)  # the official file is fp16
    model = EvaViT(cfg)
    ln_before = model.ln_vision.weight.detach().clone()
    report = load_eva_vit_checkpoint(model, path)
    half_state = {k: v.half() for k, v in state.items()}
    assert_every_tensor_landed(half_state, eva_oracle(cfg.depth), model, skip=lambda n: n.startswith("ln_vision."))
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert torch.equal(model.ln_vision.weight, ln_before)  # ln_vision is the BLIP-2 file's business
    dropped = {k for k in state if k.startswith(f"blocks.{cfg.depth}.")}
    assert dropped and dropped == set(report.ignored)


def test_blip2_file_loads_ln_vision_and_qformer(tmp_path) -> None:
    config = nano()
    ckpt = official_blip2_state(config.vision, config.vision_qformer, _Filler(1))
    path = tmp_path / "blip2_pretrained_flant5xxl.pth"
    torch.save(ckpt, path)
    vision, qformer = EvaViT(config.vision), QFormer(config.vision_qformer)
    patch_before = vision.patch_embed.weight.detach().clone()
    report = load_blip2_checkpoint(vision, qformer, path)
    state = ckpt["model"]
    assert_every_tensor_landed(state, qformer_oracle(""), qformer)
    assert torch.equal(vision.ln_vision.weight, state["ln_vision.weight"])
    assert torch.equal(vision.ln_vision.bias, state["ln_vision.bias"])
    assert torch.equal(vision.patch_embed.weight, patch_before)
    assert {"temp", "Qformer.cls.predictions.decoder.weight", "Qformer.bert.encoder.layer.0.output.dense.weight"} <= set(
        report.ignored
    )
    assert "Qformer.bert.encoder.layer.0.output_query.dense.weight" not in report.ignored


def test_imagebind_file_loads_audio_encoder(tmp_path) -> None:
    cfg = nano().audio
    state = official_imagebind_state(cfg, _Filler(2))
    path = tmp_path / "imagebind_huge.pth"
    torch.save(state, path)
    model = ImageBindAudioEncoder(cfg)
    report = load_imagebind_audio_checkpoint(model, path)
    assert_every_tensor_landed(state, imagebind_oracle, model)
    assert all("audio" not in k or k.startswith("modality_heads.audio.") for k in report.ignored)
    assert len(report.loaded) == len([k for k in state if imagebind_oracle(k) is not None])


@pytest.mark.parametrize("with_vision_qformer", [False, True])
def test_bubogpt_file_loads_joiner(tmp_path, with_vision_qformer: bool) -> None:
    config = nano()
    ckpt = official_bubogpt_state(config, _Filler(3), with_vision_qformer=with_vision_qformer)
    path = tmp_path / "bubogpt_7b.pth"
    torch.save(ckpt, path)
    vision_qformer, audio_qformer = QFormer(config.vision_qformer), QFormer(config.audio_qformer)
    vision_proj = nn.Linear(config.vision_qformer.hidden, config.llm.hidden)
    audio_proj = nn.Linear(config.audio_qformer.hidden, config.llm.hidden)
    vq_before = {k: v.clone() for k, v in vision_qformer.state_dict().items()}
    load_bubogpt_checkpoint(vision_qformer, vision_proj, audio_qformer, audio_proj, path)
    state = ckpt["model"]
    assert_every_tensor_landed(state, qformer_oracle(JOINER_Q.format("audio")), audio_qformer)
    for modality, proj in (("audio", audio_proj), ("vision", vision_proj)):
        assert torch.equal(proj.weight, state[JOINER_P.format(modality) + "weight"])
        assert torch.equal(proj.bias, state[JOINER_P.format(modality) + "bias"])
    if with_vision_qformer:
        assert_every_tensor_landed(state, qformer_oracle(JOINER_Q.format("vision")), vision_qformer)
    else:  # keeps its BLIP-2 weights
        assert all(torch.equal(v, vq_before[k]) for k, v in vision_qformer.state_dict().items())


def test_bubogpt_vision_qformer_weights_need_a_target() -> None:
    config = nano()
    ckpt = official_bubogpt_state(config, _Filler(4), with_vision_qformer=True)
    proj = nn.Linear(config.vision_qformer.hidden, config.llm.hidden)
    with pytest.raises(CheckpointError, match=r"modality_qformers\.vision\.query_tokens"):
        load_bubogpt_checkpoint(None, proj, QFormer(config.audio_qformer), nn.Linear(64, 128), ckpt)


def test_bubogpt_partial_vision_qformer_is_missing() -> None:
    config = nano()
    ckpt = official_bubogpt_state(config, _Filler(5), with_vision_qformer=True)
    key = JOINER_Q.format("vision") + "Qformer.bert.encoder.layer.1.output_query.dense.weight"
    del ckpt["model"][key]
    proj = nn.Linear(64, 128)
    with pytest.raises(CheckpointError, match=r"1 missing") as err:
        load_bubogpt_checkpoint(QFormer(config.vision_qformer), proj, QFormer(config.audio_qformer), proj, ckpt)
    assert "vision_qformer.layers.1.mlp.fc2.weight" in str(err.value) and key in str(err.value)


# ----------------------------------------------------------------------------------------------
# Failing loudly
# ----------------------------------------------------------------------------------------------


def test_missing_unexpected_and_misshaped_are_all_named() -> None:
    cfg = nano().vision
    state = official_eva_state(cfg, num_blocks=cfg.depth, fill=_Filler(6))
    del state["blocks.1.attn.v_bias"]
    state["blocks.0.attn.k_bias"] = torch.zeros(cfg.width)  # EVA has none: must not be dropped silently
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(cfg.mlp_dim + 1, cfg.width)
    model = EvaViT(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_eva_vit_checkpoint(model, state)
    message = str(err.value)
    assert "1 missing, 1 unexpected, 1 mis-shaped" in message
    assert "vision_encoder.blocks.1.attn.v_bias" in message and "'blocks.1.attn.v_bias'" in message
    assert "blocks.0.attn.k_bias" in message
    assert "blocks.0.mlp.fc1.weight -> vision_encoder.blocks.0.mlp.fc1.weight" in message
    assert f"({cfg.mlp_dim + 1}, {cfg.width})" in message
    # nothing was copied
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_errors_are_one_line_naming_the_first_keys_and_counting_the_rest() -> None:
    cfg = nano().vision
    state = official_eva_state(cfg, num_blocks=cfg.depth, fill=_Filler(14))
    extra = [f"blocks.0.extra_{i}" for i in range(MAX_NAMED + 3)]
    state.update({k: torch.zeros(1) for k in extra})
    with pytest.raises(CheckpointError) as err:
        load_eva_vit_checkpoint(EvaViT(cfg), state)
    message = str(err.value)
    assert "\n" not in message and f"0 missing, {MAX_NAMED + 3} unexpected" in message
    assert all(k in message for k in extra[:MAX_NAMED]) and extra[-1] not in message and "and 3 more" in message
    assert err.value.problems["unexpected"] == extra


def test_wrong_config_is_misshaped() -> None:
    config = nano()
    ckpt = official_blip2_state(config.vision, config.vision_qformer, _Filler(7))
    bigger = QFormer(QFormerConfig(hidden=64, num_layers=2, num_heads=2, intermediate=128, encoder_width=96))
    with pytest.raises(CheckpointError, match=r"crossattention\.self\.key\.weight .*\(64, 128\) vs model \(64, 96\)"):
        load_blip2_checkpoint(EvaViT(config.vision), bigger, ckpt)


def test_imagebind_unexpected_audio_key() -> None:
    cfg = nano().audio
    state = official_imagebind_state(cfg, _Filler(8))
    state["modality_trunks.audio.blocks.0.layer_scale_gamma1"] = torch.ones(1, 1, cfg.width)
    with pytest.raises(CheckpointError, match=r"0 missing, 1 unexpected.*unexpected \(.*\): modality_trunks\.audio\.blocks\.0\.layer_scale_gamma1$") as err:
        load_imagebind_audio_checkpoint(ImageBindAudioEncoder(cfg), state)
    assert err.value.problems["unexpected"] == ["modality_trunks.audio.blocks.0.layer_scale_gamma1"]


def test_unexpected_llm_weights_in_bubogpt_file() -> None:
    config = nano()
    ckpt = official_bubogpt_state(config, _Filler(9))
    ckpt["model"]["llama_model.model.layers.0.self_attn.q_proj.weight"] = torch.zeros(4, 4)
    proj = nn.Linear(64, 128)
    with pytest.raises(CheckpointError, match=r"llama_model\.model\.layers\.0\.self_attn\.q_proj\.weight"):
        load_bubogpt_checkpoint(QFormer(config.vision_qformer), proj, QFormer(config.audio_qformer), proj, ckpt)
    # ... unless the caller ignores them on purpose
    load_bubogpt_checkpoint(
        QFormer(config.vision_qformer), proj, QFormer(config.audio_qformer), proj, ckpt,
        extra_ignore=[(r"llama_model\..*", "test")],
    )


def test_container_layouts_are_checked(tmp_path) -> None:
    config = nano()
    eva = official_eva_state(config.vision, config.vision.depth, _Filler(10))
    with pytest.raises(CheckpointError, match="flat state dict"):
        load_eva_vit_checkpoint(EvaViT(config.vision), {"model": eva})
    blip2 = official_blip2_state(config.vision, config.vision_qformer, _Filler(11))
    with pytest.raises(CheckpointError, match=r"\{'model': state_dict"):
        load_blip2_checkpoint(EvaViT(config.vision), QFormer(config.vision_qformer), blip2["model"])
    with pytest.raises(CheckpointError, match="not found"):
        load_eva_vit_checkpoint(EvaViT(config.vision), tmp_path / "nope.pth")


class _NotPlainData:  # module level so full unpickling can find it
    pass


def test_non_weights_only_file_needs_allow_pickle(tmp_path) -> None:
    cfg = nano().audio
    state = official_imagebind_state(cfg, _Filler(12))
    path = tmp_path / "imagebind_huge.pth"
    torch.save({**state, "modality_extra.obj": _NotPlainData()}, path)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_imagebind_audio_checkpoint(ImageBindAudioEncoder(cfg), path)
    # with allow_pickle the file unpickles, and the stray key is then reported as unexpected
    with pytest.raises(CheckpointError, match=r"modality_extra\.obj"):
        load_imagebind_audio_checkpoint(ImageBindAudioEncoder(cfg), path, allow_pickle=True)


def test_eva_pos_embed_grid_is_resized() -> None:
    """A 14x14-grid file (196 px) into a 16x16 model: class token kept, a constant grid stays constant."""
    cfg = dataclasses.replace(nano().vision, patch_size=14)  # EVA's patch size: a 16x16 grid at 224 px
    small = VisionEncoderConfig(image_size=196, patch_size=14, width=cfg.width, depth=cfg.depth,
                                num_heads=cfg.num_heads, mlp_dim=cfg.mlp_dim)
    state = official_eva_state(small, cfg.depth, _Filler(13))
    cls_pos = state["pos_embed"][:, :1].clone()
    state["pos_embed"][:, 1:] = torch.linspace(-1, 1, cfg.width)  # same vector at every grid position
    model = EvaViT(cfg)
    load_eva_vit_checkpoint(model, state)
    assert model.pos_embed.shape == (1, 257, cfg.width)
    assert torch.equal(model.pos_embed[:, :1], cls_pos)
    torch.testing.assert_close(model.pos_embed[0, 1:], torch.linspace(-1, 1, cfg.width).expand(256, -1))
