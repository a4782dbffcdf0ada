"""The encoder networks: shapes, exact official parameter counts, and forward maths pinned against
independent computations (torch's own MultiheadAttention, hand-written attention)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bubogpt.audio_encoder import BiasKVAttention, ImageBindAudioEncoder
from bubogpt.config import bubogpt_7b, nano
from bubogpt.qformer import QFormer, QFormerAttention, QFormerMLP
from bubogpt.vision_encoder import EvaAttention, EvaViT


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        if p.ndim == 1 and "norm" in name and name.endswith("weight"):
            p.add_(1.0)
    return module


# ----------------------------------------------------------------------------------------------
# Official parameter counts of bubogpt-7b.
#
# Obtained by instantiating the OFFICIAL module code (magic-research/bubogpt @ HEAD:
# bubogpt/models/eva_vit.py, bubogpt/models/Qformer.py, imagebind/models/*.py) on the meta device,
# with only their third-party imports stubbed (timm init helpers, transformers 4.x base classes,
# BertConfig = bert-base-uncased defaults):
#   - vision encoder: VisionTransformer(**create_eva_vit_g args, depth=39) + nn.LayerNorm(1408) (ln_vision)
#   - Q-Formers: SequenceGenericQFormer(32 queries, encoder_width 1408 / 768) after set_Qformer()
#     (BuboGPT's load_Qformer drops cls, word/position embeddings and the text FFNs), query_tokens included
#   - audio encoder: imagebind_huge(with_head=False): modality_preprocessors.audio + modality_trunks.audio
#     (+ modality_postprocessors.audio, which only has the log_logit_scale buffer)
# Cross-checked by hand for the vision Q-Former:
#   32*768 + 1536 + 12*(4*590592 + 1536 + 2362368 + 2360064 + 1536) + 6*(2*590592 + 2*1082112 + 1536)
#   = 105_162_240.
# ----------------------------------------------------------------------------------------------
OFFICIAL_VISION_ENCODER_PARAMS = 985_897_344
OFFICIAL_VISION_QFORMER_PARAMS = 105_162_240
OFFICIAL_AUDIO_ENCODER_PARAMS = 85_447_680
OFFICIAL_AUDIO_QFORMER_PARAMS = 99_264_000


def test_official_parameter_counts_bubogpt_7b() -> None:
    config = bubogpt_7b()
    with torch.device("meta"):
        vision = EvaViT(config.vision)
        vision_qformer = QFormer(config.vision_qformer)
        audio = ImageBindAudioEncoder(config.audio)
        audio_qformer = QFormer(config.audio_qformer)
    assert _num_params(vision) == OFFICIAL_VISION_ENCODER_PARAMS
    assert _num_params(vision_qformer) == OFFICIAL_VISION_QFORMER_PARAMS
    assert _num_params(audio) == OFFICIAL_AUDIO_ENCODER_PARAMS
    assert _num_params(audio_qformer) == OFFICIAL_AUDIO_QFORMER_PARAMS
    # The ImageBind audio scale is a buffer in the official model too (not a parameter).
    assert [name for name, _ in audio.named_buffers()] == ["log_logit_scale"]


def test_bubogpt_7b_structure() -> None:
    config = bubogpt_7b()
    with torch.device("meta"):
        vision = EvaViT(config.vision)
        qformer = QFormer(config.vision_qformer)
        audio = ImageBindAudioEncoder(config.audio)
    assert len(vision.blocks) == 39 and vision.blocks[0].attn.head_dim == 88
    assert vision.pos_embed.shape == (1, 257, 1408)
    assert vision.blocks[0].mlp.fc1.out_features == 6144  # int(1408 * 4.3637)
    assert [layer.cross_attn is not None for layer in qformer.layers] == [i % 2 == 0 for i in range(12)]
    assert qformer.layers[0].cross_attn.k_proj.in_features == 1408
    assert audio.pos_embed.shape == (1, 229, 768)  # 12 x 19 patches + cls
    assert audio.patch_embed.bias is None


# ----------------------------------------------------------------------------------------------
# Shapes at nano size.
# ----------------------------------------------------------------------------------------------


def test_nano_shapes_and_batch_independence() -> None:
    config = nano()
    torch.manual_seed(0)
    vision = EvaViT(config.vision).eval()
    vision_qformer = QFormer(config.vision_qformer).eval()
    audio = ImageBindAudioEncoder(config.audio).eval()
    audio_qformer = QFormer(config.audio_qformer).eval()
    pixels = torch.randn(2, 3, 224, 224)
    clips = torch.randn(2, config.audio.num_clips, 1, 128, 204)
    with torch.no_grad():
        image_tokens = vision(pixels)
        image_queries = vision_qformer(image_tokens)
        audio_tokens = audio(clips)
        audio_queries = audio_qformer(audio_tokens)
        assert image_tokens.shape == (2, config.vision.num_tokens, config.vision.width)
        assert image_queries.shape == (2, 32, config.vision_qformer.hidden)
        assert audio_tokens.shape == (2, config.audio.num_tokens, config.audio.width)
        assert audio_queries.shape == (2, 32, config.audio_qformer.hidden)
        # Each sample is computed on its own (no cross-batch mixing).
        torch.testing.assert_close(vision(pixels[1:]), image_tokens[1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(audio(clips[1:]), audio_tokens[1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vision_qformer(image_tokens[1:]), image_queries[1:], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# EVA attention: q_bias / v_bias == a fused qkv bias cat(q_bias, 0, v_bias).
# ----------------------------------------------------------------------------------------------


def test_eva_attention_equals_fused_qkv_bias() -> None:
    dim, heads = 48, 4
    attn = _randomize(EvaAttention(dim, heads), seed=1)
    x = torch.randn(2, 7, dim)
    # Independent reference: one Linear with the explicit bias, hand-written softmax attention.
    fused = nn.Linear(dim, 3 * dim)
    with torch.no_grad():
        fused.weight.copy_(attn.qkv.weight)
        fused.bias.copy_(torch.cat((attn.q_bias, torch.zeros(dim), attn.v_bias)))
        q, k, v = fused(x).reshape(2, 7, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        weights = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, dim))
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
        # and the biases really matter: zeroing q_bias changes the output
        attn.q_bias.zero_()
        assert not torch.allclose(attn(x), expected, atol=1e-4)


def test_eva_vit_forward_by_hand() -> None:
    """Patch conv -> [cls, patches] + pos -> pre-norm blocks -> ln_vision, recomputed with plain ops."""
    config = nano().vision
    model = _randomize(EvaViT(config), seed=2).eval()
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        x = F.conv2d(pixels, model.patch_embed.weight, model.patch_embed.bias, stride=config.patch_size)
        x = torch.cat((model.cls_token, x.flatten(2).transpose(1, 2)), dim=1) + model.pos_embed
        for block in model.blocks:
            x = x + block.attn(F.layer_norm(x, (config.width,), block.norm1.weight, block.norm1.bias, 1e-6))
            h = F.layer_norm(x, (config.width,), block.norm2.weight, block.norm2.bias, 1e-6)
            x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(h), approximate="none"))
        x = F.layer_norm(x, (config.width,), model.ln_vision.weight, model.ln_vision.bias, 1e-5)
        torch.testing.assert_close(model(pixels), x, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# ImageBind attention == torch.nn.MultiheadAttention(add_bias_kv=True).
# ----------------------------------------------------------------------------------------------


def test_bias_kv_attention_equals_torch_multihead_attention() -> None:
    dim, heads = 48, 4
    ours = _randomize(BiasKVAttention(dim, heads), seed=3)
    torch_mha = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=True)  # seq-first, as ImageBind
    with torch.no_grad():
        torch_mha.in_proj_weight.copy_(ours.in_proj.weight)
        torch_mha.in_proj_bias.copy_(ours.in_proj.bias)
        torch_mha.bias_k.copy_(ours.bias_k)
        torch_mha.bias_v.copy_(ours.bias_v)
        torch_mha.out_proj.weight.copy_(ours.out_proj.weight)
        torch_mha.out_proj.bias.copy_(ours.out_proj.bias)
    torch_mha.eval()
    x = torch.randn(3, 11, dim)
    with torch.no_grad():
        seq_first = x.transpose(0, 1)
        expected = torch_mha(seq_first, seq_first, seq_first, need_weights=False)[0].transpose(0, 1)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
        # the learned key/value slot is used
        ours.bias_v.add_(1.0)
        assert not torch.allclose(ours(x), expected, atol=1e-4)


def test_audio_encoder_postprocess_and_clip_mean() -> None:
    config = nano().audio
    model = _randomize(ImageBindAudioEncoder(config), seed=4).eval()
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(20.0))
        clips = torch.randn(2, 3, 1, 128, 204)
        per_clip = model.encode_clips(clips.flatten(0, 1))
        # every token of every clip: unit L2 norm times the logit scale 20
        torch.testing.assert_close(per_clip.norm(dim=-1), torch.full(per_clip.shape[:2], 20.0), atol=1e-4, rtol=1e-5)
        expected = per_clip.reshape(2, 3, *per_clip.shape[1:]).mean(dim=1)
        torch.testing.assert_close(model(clips), expected, atol=1e-6, rtol=1e-6)
        # the scale is clipped at 100, like ImageBind's LearnableLogitScaling
        model.log_logit_scale.fill_(math.log(1000.0))
        torch.testing.assert_close(
            model.encode_clips(clips[0]).norm(dim=-1), torch.full((3, config.num_tokens), 100.0), atol=1e-3, rtol=1e-5
        )


# ----------------------------------------------------------------------------------------------
# Q-Former: BERT post-norm attention and the query FFN, by hand.
# ----------------------------------------------------------------------------------------------


def _bert_attention_by_hand(attn: QFormerAttention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    heads, d = attn.num_heads, attn.head_dim

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], heads, d).permute(0, 2, 1, 3)

    q = split(x @ attn.q_proj.weight.T + attn.q_proj.bias)
    k = split(context @ attn.k_proj.weight.T + attn.k_proj.bias)
    v = split(context @ attn.v_proj.weight.T + attn.v_proj.bias)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d) + 0.0  # BERT's additive mask is 0 for all-ones masks
    ctx = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(x.shape)
    out = ctx @ attn.out_proj.weight.T + attn.out_proj.bias
    return F.layer_norm(out + x, (x.shape[-1],), attn.norm.weight, attn.norm.bias, 1e-12)


def test_qformer_self_and_cross_attention_by_hand() -> None:
    hidden, heads, enc = 32, 4, 24
    self_attn = _randomize(QFormerAttention(hidden, heads, hidden, 1e-12), seed=5)
    cross_attn = _randomize(QFormerAttention(hidden, heads, enc, 1e-12), seed=6)
    x, context = torch.randn(2, 5, hidden), torch.randn(2, 9, enc)
    with torch.no_grad():
        torch.testing.assert_close(self_attn(x, x), _bert_attention_by_hand(self_attn, x, x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            cross_attn(x, context), _bert_attention_by_hand(cross_attn, x, context), atol=1e-5, rtol=1e-5
        )


def test_qformer_forward_by_hand() -> None:
    config = nano().vision_qformer
    model = _randomize(QFormer(config), seed=7).eval()
    encoder_states = torch.randn(2, 257, config.encoder_width)
    with torch.no_grad():
        x = F.layer_norm(model.query_tokens, (config.hidden,), model.embed_norm.weight, model.embed_norm.bias, 1e-12)
        x = x.expand(2, -1, -1)
        for i, layer in enumerate(model.layers):
            x = _bert_attention_by_hand(layer.self_attn, x, x)
            if i % config.cross_attention_freq == 0:
                x = _bert_attention_by_hand(layer.cross_attn, x, encoder_states)
            mlp: QFormerMLP = layer.mlp
            h = F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
            x = F.layer_norm(h + x, (config.hidden,), mlp.norm.weight, mlp.norm.bias, 1e-12)
        torch.testing.assert_close(model(encoder_states), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("freq", [1, 2, 3])
def test_qformer_cross_attention_layers(freq: int) -> None:
    config = nano().audio_qformer
    config = dataclasses.replace(config, num_layers=4, cross_attention_freq=freq)
    model = QFormer(config)
    assert [layer.cross_attn is not None for layer in model.layers] == [i % freq == 0 for i in range(4)]
