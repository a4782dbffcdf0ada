"""Grounding DINO: official checkpoint layout, parameter count, text front end, post-processing, ONNX.

Everything runs on the tiny preset with a tiny BERT config + vocab written here (no hub, no weights).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bubogpt.grounding.grounding_dino.checkpoint import (
    GroundingDinoCheckpointError,
    load_grounding_dino_checkpoint,
)
from bubogpt.grounding.grounding_dino.config import BertTextConfig, GroundingDinoConfig
from bubogpt.grounding.grounding_dino import (
    GDINO_PRESETS,
    ONNX_DYNAMIC_AXES,
    ONNX_INPUT_NAMES,
    ONNX_OUTPUT_NAMES,
    GroundingDino,
    caption_from_tags,
    ground,
    load_tokenizer,
    postprocess,
    preprocess_image,
    resized_size,
    tokenize,
)

WORDS = ["dog", "cat", "person", "red", "car", "hot", "tree", "sky", "table", "chair", "a", "the", "on", "##s", "man"]


def write_text_encoder_dir(path: Path, text: BertTextConfig) -> Path:
    """A local BERT directory: HF config.json with the given sizes and a small WordPiece vocab."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!"] + WORDS
    vocab += [f"[unused{i}]" for i in range(text.vocab_size - len(vocab))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {
        "model_type": "bert",
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden,
        "num_hidden_layers": text.num_layers,
        "num_attention_heads": text.num_heads,
        "intermediate_size": text.intermediate,
        "max_position_embeddings": text.max_positions,
        "type_vocab_size": text.type_vocab_size,
        "layer_norm_eps": text.norm_eps,
        "hidden_act": "gelu",
        "pad_token_id": 0,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    return write_text_encoder_dir(tmp_path_factory.mktemp("tiny_bert"), GDINO_PRESETS["tiny"].text)


@pytest.fixture(scope="module")
def cfg(text_dir) -> GroundingDinoConfig:
    return GDINO_PRESETS["tiny"].with_text_encoder_dir(text_dir)


@pytest.fixture(scope="module")
def tokenizer(text_dir):
    return load_tokenizer(text_dir)


@pytest.fixture(scope="module")
def model(cfg) -> GroundingDino:
    torch.manual_seed(0)
    net = GroundingDino(cfg).eval()
    with torch.no_grad():  # non-trivial values everywhere (default inits leave zeros and ones)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def ids_of(tokenizer, *tokens: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(tokens))


# --------------------------------------------------------------------------------------------------
# The official key layout, derived here from the official module definitions
# (groundingdino.py, backbone/swin_transformer.py, transformer.py, fuse_modules.py, ms_deform_attn.py,
# transformer_vanilla.py, utils.MLP, HF BertModel) independently of the loader's key map.
# --------------------------------------------------------------------------------------------------


def official_relative_position_index(window: int) -> torch.Tensor:
    index = torch.empty(window * window, window * window, dtype=torch.long)
    cells = [(r, c) for r in range(window) for c in range(window)]
    for a, (r1, c1) in enumerate(cells):
        for b, (r2, c2) in enumerate(cells):
            index[a, b] = (r1 - r2 + window - 1) * (2 * window - 1) + (c1 - c2 + window - 1)
    return index


def official_shapes(cfg: GroundingDinoConfig) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, n_out: int, n_in: int, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if bias:
            shapes[f"{name}.bias"] = (n_out,)

    def norm(name: str, n: int) -> None:
        shapes[f"{name}.weight"] = (n,)
        shapes[f"{name}.bias"] = (n,)

    def mha(name: str, d: int) -> None:  # nn.MultiheadAttention
        shapes[f"{name}.in_proj_weight"] = (3 * d, d)
        shapes[f"{name}.in_proj_bias"] = (3 * d,)
        linear(f"{name}.out_proj", d, d)

    def deform(name: str, d: int, heads: int, levels: int, points: int) -> None:
        linear(f"{name}.sampling_offsets", heads * levels * points * 2, d)
        linear(f"{name}.attention_weights", heads * levels * points, d)
        linear(f"{name}.value_proj", d, d)
        linear(f"{name}.output_proj", d, d)

    def box_mlp(name: str, d: int) -> None:
        linear(f"{name}.layers.0", d, d)
        linear(f"{name}.layers.1", d, d)
        linear(f"{name}.layers.2", 4, d)

    sw, tx, d = cfg.swin, cfg.text, cfg.hidden
    # Swin (Joiner[0])
    shapes["backbone.0.patch_embed.proj.weight"] = (sw.embed_dim, 3, sw.patch_size, sw.patch_size)
    shapes["backbone.0.patch_embed.proj.bias"] = (sw.embed_dim,)
    norm("backbone.0.patch_embed.norm", sw.embed_dim)
    for i, depth in enumerate(sw.depths):
        dim = sw.embed_dim * 2**i
        for j in range(depth):
            p = f"backbone.0.layers.{i}.blocks.{j}"
            norm(f"{p}.norm1", dim)
            shapes[f"{p}.attn.relative_position_bias_table"] = ((2 * sw.window_size - 1) ** 2, sw.num_heads[i])
            shapes[f"{p}.attn.relative_position_index"] = (sw.window_size**2, sw.window_size**2)
            linear(f"{p}.attn.qkv", 3 * dim, dim)
            linear(f"{p}.attn.proj", dim, dim)
            norm(f"{p}.norm2", dim)
            linear(f"{p}.mlp.fc1", int(dim * sw.mlp_ratio), dim)
            linear(f"{p}.mlp.fc2", dim, int(dim * sw.mlp_ratio))
        if i < len(sw.depths) - 1:
            linear(f"backbone.0.layers.{i}.downsample.reduction", 2 * dim, 4 * dim, bias=False)
            norm(f"backbone.0.layers.{i}.downsample.norm", 4 * dim)
    for i in sw.out_indices:
        norm(f"backbone.0.norm{i}", sw.embed_dim * 2**i)
    # input projections
    channels = [sw.embed_dim * 2**i for i in sw.out_indices]
    for level in range(cfg.num_feature_levels):
        if level < len(channels):
            shapes[f"input_proj.{level}.0.weight"] = (d, channels[level], 1, 1)
        else:
            shapes[f"input_proj.{level}.0.weight"] = (d, channels[-1] if level == len(channels) else d, 3, 3)
        shapes[f"input_proj.{level}.0.bias"] = (d,)
        norm(f"input_proj.{level}.1", d)
    # BERT (BertModelWarper keeps embeddings, encoder, pooler)
    shapes["bert.embeddings.word_embeddings.weight"] = (tx.vocab_size, tx.hidden)
    shapes["bert.embeddings.position_embeddings.weight"] = (tx.max_positions, tx.hidden)
    shapes["bert.embeddings.token_type_embeddings.weight"] = (tx.type_vocab_size, tx.hidden)
    norm("bert.embeddings.LayerNorm", tx.hidden)
    shapes["bert.embeddings.position_ids"] = (1, tx.max_positions)
    for k in range(tx.num_layers):
        p = f"bert.encoder.layer.{k}"
        for proj in ("query", "key", "value"):
            linear(f"{p}.attention.self.{proj}", tx.hidden, tx.hidden)
        linear(f"{p}.attention.output.dense", tx.hidden, tx.hidden)
        norm(f"{p}.attention.output.LayerNorm", tx.hidden)
        linear(f"{p}.intermediate.dense", tx.intermediate, tx.hidden)
        linear(f"{p}.output.dense", tx.hidden, tx.intermediate)
        norm(f"{p}.output.LayerNorm", tx.hidden)
    linear("bert.pooler.dense", tx.hidden, tx.hidden)
    linear("feat_map", d, tx.hidden)
    # transformer
    shapes["transformer.level_embed"] = (cfg.num_feature_levels, d)
    shapes["transformer.tgt_embed.weight"] = (cfg.num_queries, d)
    linear("transformer.enc_output", d, d)
    norm("transformer.enc_output_norm", d)
    box_mlp("transformer.enc_out_bbox_embed", d)
    for i in range(cfg.num_encoder_layers):
        p = f"transformer.encoder.layers.{i}"
        deform(f"{p}.self_attn", d, cfg.num_heads, cfg.num_feature_levels, cfg.enc_n_points)
        norm(f"{p}.norm1", d)
        linear(f"{p}.linear1", cfg.dim_feedforward, d)
        linear(f"{p}.linear2", d, cfg.dim_feedforward)
        norm(f"{p}.norm2", d)
        p = f"transformer.encoder.text_layers.{i}"
        mha(f"{p}.self_attn", d)
        linear(f"{p}.linear1", cfg.dim_feedforward // 2, d)
        linear(f"{p}.linear2", d, cfg.dim_feedforward // 2)
        norm(f"{p}.norm1", d)
        norm(f"{p}.norm2", d)
        p = f"transformer.encoder.fusion_layers.{i}"
        e = cfg.dim_feedforward // 2
        norm(f"{p}.layer_norm_v", d)
        norm(f"{p}.layer_norm_l", d)
        for proj in ("v_proj", "l_proj", "values_v_proj", "values_l_proj"):
            linear(f"{p}.attn.{proj}", e, d)
        linear(f"{p}.attn.out_v_proj", d, e)
        linear(f"{p}.attn.out_l_proj", d, e)
        shapes[f"{p}.gamma_v"] = (d,)
        shapes[f"{p}.gamma_l"] = (d,)
    for i in range(cfg.num_decoder_layers):
        p = f"transformer.decoder.layers.{i}"
        deform(f"{p}.cross_attn", d, cfg.num_heads, cfg.num_feature_levels, cfg.dec_n_points)
        norm(f"{p}.norm1", d)
        mha(f"{p}.ca_text", d)
        norm(f"{p}.catext_norm", d)
        mha(f"{p}.self_attn", d)
        norm(f"{p}.norm2", d)
        linear(f"{p}.linear1", cfg.dim_feedforward, d)
        linear(f"{p}.linear2", d, cfg.dim_feedforward)
        norm(f"{p}.norm3", d)
    norm("transformer.decoder.norm", d)
    linear("transformer.decoder.ref_point_head.layers.0", d, 2 * d)
    linear("transformer.decoder.ref_point_head.layers.1", d, d)
    # the shared box MLP, once per module path (GroundingDINO.bbox_embed and transformer.decoder.bbox_embed)
    for i in range(cfg.num_decoder_layers):
        box_mlp(f"bbox_embed.{i}", d)
        box_mlp(f"transformer.decoder.bbox_embed.{i}", d)
    return shapes


def official_checkpoint(cfg: GroundingDinoConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official keys at cfg's sizes: distinct random values per tensor, buffers and aliases as the official has them."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in official_shapes(cfg).items():
        if key.endswith("relative_position_index"):
            state[key] = official_relative_position_index(cfg.swin.window_size)
        elif key == "bert.embeddings.position_ids":
            state[key] = torch.arange(shape[1])[None]
        else:
            state[key] = torch.randn(shape, generator=g)
    for key in list(state):  # aliases of the shared box MLP share the tensor of bbox_embed.0
        for prefix in ("bbox_embed.", "transformer.decoder.bbox_embed."):
            if key.startswith(prefix):
                layer, rest = key[len(prefix) :].split(".", 1)
                state[key] = state[f"bbox_embed.0.{rest}"]
    return state


def released_checkpoint(cfg: GroundingDinoConfig, seed: int = 0) -> dict:
    """`groundingdino_swint_ogc.pth` as released: {"model": state} holding, beyond the official model's
    state_dict(), the training code's denoising label embedding (GroundingDINO issue #271)."""
    state = official_checkpoint(cfg, seed)
    state["label_enc.weight"] = torch.randn(2001, cfg.hidden, generator=torch.Generator().manual_seed(seed + 1))
    return {"model": state}


def our_name(official: str) -> str:
    for src, dst in (("backbone.0.", "backbone."), ("bbox_embed.0.", "bbox_embed.")):
        if official.startswith(src):
            return dst + official[len(src) :]
    return official


# --------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------

NOT_LOADED = ("relative_position_index", "bert.embeddings.position_ids", "bert.pooler.")


def is_alias(key: str) -> bool:
    return (key.startswith("bbox_embed.") and not key.startswith("bbox_embed.0.")) or key.startswith(
        "transformer.decoder.bbox_embed."
    )


def test_official_checkpoint_fills_every_tensor(cfg, tmp_path):
    state = official_checkpoint(cfg)
    net = GroundingDino(cfg)
    # from a file, wrapped as the official {"model": ...}, with DistributedDataParallel's "module." prefix
    path = tmp_path / "groundingdino_tiny.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    report = load_grounding_dino_checkpoint(net, path)

    ours = net.state_dict()
    loaded_keys = [k for k in state if not is_alias(k) and not any(part in k for part in NOT_LOADED)]
    assert sorted(our_name(k) for k in loaded_keys) == sorted(ours), "every tensor of ours has exactly one official key"
    for key in loaded_keys:
        assert torch.equal(ours[our_name(key)], state[key]), key
    assert len(report.loaded) == len(ours)
    assert report.ignored == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    # the shared box MLP: one tensor of ours, every official alias checked
    last = cfg.num_decoder_layers - 1
    assert torch.equal(net.bbox_embed.layers[2].weight, state[f"transformer.decoder.bbox_embed.{last}.layers.2.weight"])
    assert "backbone.0.layers.0.blocks.1.attn.relative_position_index" in report.checked
    assert "bert.embeddings.position_ids" in report.checked


def test_released_file_extras_are_skipped_or_checked(cfg):
    released = released_checkpoint(cfg)
    net = GroundingDino(cfg)
    report = load_grounding_dino_checkpoint(net, released)
    assert "label_enc.weight" in report.ignored and "bert.embeddings.position_ids" in report.checked
    assert torch.equal(net.feat_map.weight, released["model"]["feat_map.weight"])


def test_checkpoint_buffers_are_optional(cfg):
    buffers = ("position_ids", "relative_position_index")
    state = {k: v for k, v in official_checkpoint(cfg).items() if not is_alias(k) and not any(b in k for b in buffers)}
    load_grounding_dino_checkpoint(GroundingDino(cfg), state)  # flat state dict, no buffers, no aliases


@pytest.mark.parametrize(
    "change, kind, named",
    [
        ("drop:transformer.encoder.fusion_layers.0.gamma_v", "1 missing", "fusion_layers.0.gamma_v"),
        ("drop:backbone.0.layers.1.blocks.1.attn.qkv.weight", "1 missing", "backbone.0.layers.1.blocks.1.attn.qkv"),
        ("add:transformer.refpoint_embed.weight", "1 unexpected", "transformer.refpoint_embed.weight"),
        ("shape:bert.embeddings.word_embeddings.weight", "1 mis-shaped", "bert.embeddings.word_embeddings.weight"),
        ("shape:input_proj.3.0.weight", "1 mis-shaped", "input_proj.3.0.weight"),
        ("value:transformer.decoder.bbox_embed.1.layers.0.bias", "1 inconsistent", "decoder.bbox_embed.1.layers.0.bias"),
        ("value:bert.embeddings.position_ids", "1 inconsistent", "bert.embeddings.position_ids"),
        ("value:backbone.0.layers.3.blocks.0.attn.relative_position_index", "1 inconsistent", "3.blocks.0.attn.relative"),
    ],
)
def test_checkpoint_errors_name_the_keys(cfg, change, kind, named):
    state = dict(official_checkpoint(cfg))
    action, key = change.split(":")
    if action == "drop":
        del state[key]
    elif action == "add":
        state[key] = torch.zeros(3, 4)
    elif action == "shape":
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    else:
        state[key] = state[key] + 1
    net = GroundingDino(cfg)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(GroundingDinoCheckpointError) as err:
        load_grounding_dino_checkpoint(net, {"model": state})
    assert isinstance(err.value, ValueError)
    assert kind in str(err.value) and named in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "nothing copied on failure"


def test_parameter_count_matches_official():
    with torch.device("meta"):
        net = GroundingDino(GDINO_PRESETS["swint_ogc"])
    ours = sum(p.numel() for p in net.parameters())
    bert_pooler = 768 * 768 + 768
    # 172,839,682: sum(p.numel() for p in model.parameters()) of the official GroundingDINO built with
    # GroundingDINO_SwinT_OGC.py (IDEA-Research/GroundingDINO HEAD, modules copied to /tmp with timm and
    # torchvision stubbed, a bert-base-uncased config, built on CPU because the official Swin calls
    # .item() at construction). Shared modules count once there too. We do not build the BERT pooler.
    assert ours + bert_pooler == 172_839_682
    assert ours == 172_249_090


# --------------------------------------------------------------------------------------------------
# Text front end
# --------------------------------------------------------------------------------------------------


def test_caption_from_tags_matches_bubogpt():
    # app.py: ','.join(tags); grounding_model.prompt2mask2: lower, strip, append "."
    assert caption_from_tags(["Dog", "cat", "red car"]) == "dog,cat,red car."
    assert caption_from_tags(["sky."]) == "sky."


def test_text_config_from_dir(text_dir):
    assert BertTextConfig.from_dir(text_dir) == GDINO_PRESETS["tiny"].text


def test_sub_sentence_masks_single_piece(tokenizer, cfg):
    text = tokenize("Dog,cat", tokenizer, cfg)  # -> "dog,cat." : [CLS] dog , cat . [SEP]
    assert text.input_ids.tolist() == [ids_of(tokenizer, "[CLS]", "dog", ",", "cat", ".", "[SEP]")]
    assert text.attention_mask.tolist() == [[1] * 6]
    assert text.token_type_ids.tolist() == [[0] * 6]
    # the comma is not a special token: "dog , cat ." is one piece
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[0, 0] = expected[5, 5] = True
    expected[1:5, 1:5] = True
    assert torch.equal(text.text_self_attention_masks[0], expected)
    assert text.position_ids.tolist() == [[0, 0, 1, 2, 3, 0]]


def test_sub_sentence_masks_pieces_and_padding(tokenizer, cfg):
    text = tokenize(["dog . red car ?", "cat."], tokenizer, cfg)
    # row 0: [CLS] dog . red car ? . [SEP]   ("." appended)   row 1: [CLS] cat . [SEP] [PAD] x4
    assert text.input_ids[0].tolist() == ids_of(tokenizer, "[CLS]", "dog", ".", "red", "car", "?", ".", "[SEP]")
    assert text.input_ids[1].tolist() == ids_of(tokenizer, "[CLS]", "cat", ".", "[SEP]") + [0] * 4
    assert text.attention_mask.tolist() == [[1] * 8, [1] * 4 + [0] * 4]

    def blocks(*spans: tuple[int, int]) -> torch.Tensor:
        mask = torch.eye(8, dtype=torch.bool)
        for start, stop in spans:
            mask[start:stop, start:stop] = True
        return mask

    assert torch.equal(text.text_self_attention_masks[0], blocks((1, 3), (3, 6), (6, 7)))
    # row 1: the [SEP] is not in the last column, so it closes a piece of its own (official rule)
    assert torch.equal(text.text_self_attention_masks[1], blocks((1, 3), (3, 4)))
    assert text.position_ids.tolist() == [[0, 0, 1, 0, 1, 2, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0]]
    assert text.text_self_attention_masks.dtype == torch.bool


def test_tokenize_cuts_to_max_text_len(tokenizer, cfg):
    caption = " , ".join(["dog"] * 40)  # 79 words + "." + [CLS] [SEP]
    text = tokenize(caption, tokenizer, cfg)
    assert all(t.shape[1] == cfg.max_text_len for t in (text.input_ids, text.attention_mask, text.position_ids))
    assert text.text_self_attention_masks.shape == (1, cfg.max_text_len, cfg.max_text_len)
    # masks were computed on the full length: one piece from column 1 on, positions 0.. without restart
    assert text.position_ids[0, 1:].tolist() == list(range(cfg.max_text_len - 1))
    assert bool(text.text_self_attention_masks[0, 1:, 1:].all())


# --------------------------------------------------------------------------------------------------
# Pre- and post-processing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width, height, expected",
    [
        (640, 480, (800, 1066)),  # short side to 800
        (480, 640, (1066, 800)),
        (1000, 100, (133, 1330)),  # long side capped: size = round(1333 * 100 / 1000)
        (800, 1200, (1200, 800)),  # short side already 800: unchanged
        (1333, 1333, (800, 800)),
    ],
)
def test_resized_size(width, height, expected):
    assert resized_size(width, height, 800, 1333) == expected


def test_preprocess_image(cfg):
    swint = GDINO_PRESETS["swint_ogc"]
    image = Image.new("RGB", (640, 480), (124, 116, 104))  # ~ the ImageNet mean
    pixels, hw = preprocess_image(image, swint)
    assert hw == (800, 1066) and pixels.shape == (1, 3, 800, 1066)
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor(swint.pixel_mean)) / torch.tensor(swint.pixel_std)
    assert torch.allclose(pixels[0, :, 400, 500], expected, atol=1e-6)
    # PIL bilinear resize as torchvision's F.resize on PIL images
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8))
    pixels, hw = preprocess_image(image, cfg)  # tiny preset: short side 128, long side at most 192
    assert hw == (115, 191)
    resized = np.asarray(image.resize((191, 115), Image.BILINEAR), dtype=np.float32) / 255
    mean, std = torch.tensor(cfg.pixel_mean)[:, None, None], torch.tensor(cfg.pixel_std)[:, None, None]
    manual = (torch.from_numpy(resized).permute(2, 0, 1) - mean) / std
    assert torch.allclose(pixels[0], manual, atol=1e-6)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_postprocess_thresholds_and_phrases(tokenizer, cfg):
    text = tokenize("dog,cat.", tokenizer, cfg)  # [CLS] dog , cat . [SEP]
    num_tokens, width = text.input_ids.shape[1], cfg.max_text_len
    logits = torch.full((5, width), float("-inf"))
    logits[:, :num_tokens] = logit(0.01)
    logits[0, 1] = logit(0.2501)  # dog just over the box threshold -> kept, "dog"
    logits[1, 1] = logit(0.2499)  # just under -> dropped
    logits[2, 3] = logit(0.9)  # cat; dog just over the text threshold, "," just under
    logits[2, 1] = logit(0.2001)
    logits[2, 2] = logit(0.1999)
    logits[3, 0] = logit(0.99)  # [CLS] makes the score but never the phrase; "." is removed
    logits[3, 4] = logit(0.6)
    logits[4, 5] = logit(0.3)  # [SEP] is decoded like any other token (official behaviour)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]] * 5)
    detections = postprocess(logits[None], boxes[None], text.input_ids, tokenizer, (480, 640))
    assert [d.phrase for d in detections] == ["dog", "dog cat", "", "[SEP]"]
    assert [round(d.score, 4) for d in detections] == [0.2501, 0.9, 0.99, 0.3]
    assert detections[0].box_xyxy == pytest.approx((256.0, 144.0, 384.0, 336.0))
    # the thresholds are parameters
    assert len(postprocess(logits, boxes, text.input_ids, tokenizer, (480, 640), box_threshold=0.5)) == 2
    strict_text = postprocess(logits, boxes, text.input_ids[0], tokenizer, (1, 1), text_threshold=0.5)
    assert strict_text[1].phrase == "cat"


def test_postprocess_last_column_never_in_phrase(tokenizer, cfg):
    width = cfg.max_text_len
    input_ids = torch.tensor([ids_of(tokenizer, "[CLS]") + ids_of(tokenizer, "dog") * (width - 1)])
    logits = torch.full((1, width), logit(0.01))
    logits[0, width - 1] = logit(0.8)  # official right_idx = max_text_len - 1: excluded from the phrase
    logits[0, 2] = logit(0.5)
    (detection,) = postprocess(logits, torch.rand(1, 4), input_ids, tokenizer, (10, 10))
    assert detection.phrase == "dog" and detection.score == pytest.approx(0.8)


@pytest.mark.parametrize("height, width", [(480, 640), (640, 480), (100, 1000), (1333, 800)])
def test_postprocess_boxes_to_original_pixels(tokenizer, cfg, height, width):
    text = tokenize("dog.", tokenizer, cfg)
    logits = torch.full((3, cfg.max_text_len), float("-inf"))
    logits[:, :3] = logit(0.9)
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.1, 0.2], [0.9, 0.1, 0.2, 0.2]])
    detections = postprocess(logits, boxes, text.input_ids, tokenizer, (height, width))
    for det, (cx, cy, w, h) in zip(detections, boxes.tolist()):
        expected = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        assert det.box_xyxy == pytest.approx(expected, rel=1e-5, abs=1e-3)
    assert detections[0].box_xyxy == pytest.approx((0, 0, width, height), abs=1e-3)


# --------------------------------------------------------------------------------------------------
# Forward and ONNX
# --------------------------------------------------------------------------------------------------


def test_forward_shapes_masks_and_batch_independence(model, tokenizer, cfg):
    text = tokenize(["dog,cat.", "a red car . the man ?"], tokenizer, cfg)
    pixels = torch.randn(2, 3, 97, 150)  # odd sizes: padding in the patch embedding, windows and merging
    alone = tokenize("dog,cat.", tokenizer, cfg)  # 6 tokens, no padding
    with torch.no_grad():
        logits, boxes = model(pixels, *text)
        single_logits, single_boxes = model(pixels[:1], *alone)
    assert logits.shape == (2, cfg.num_queries, cfg.max_text_len) and boxes.shape == (2, cfg.num_queries, 4)
    valid = text.attention_mask.bool()
    finite = torch.zeros(2, cfg.max_text_len, dtype=torch.bool)
    finite[:, : valid.shape[1]] = valid
    assert torch.equal(torch.isfinite(logits), finite[:, None, :].expand_as(logits))
    assert bool(((boxes >= 0) & (boxes <= 1)).all())
    # sample 0 alone (its own unpadded text) gives the same result
    assert torch.allclose(single_logits[0, :, :6], logits[0, :, :6], atol=1e-4)
    assert torch.allclose(single_boxes[0], boxes[0], atol=1e-5)


def test_ground_end_to_end(model, tokenizer):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8))
    detections = ground(model, tokenizer, image, caption_from_tags(["dog", "cat"]), box_threshold=0.0)
    assert len(detections) == model.config.num_queries
    for det in detections:
        x0, y0, x1, y1 = det.box_xyxy
        assert x0 <= x1 and y0 <= y1 and 0.0 < det.score <= 1.0


def assert_bit_identical(got, expected, where="outputs"):
    """Same nesting of dicts and lists, same keys in the same order, torch.equal tensors."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected), where
        for key in expected:
            assert_bit_identical(got[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_bit_identical(g, e, f"{where}[{i}]")
    else:
        assert got.dtype == expected.dtype and got.shape == expected.shape, where
        assert torch.equal(got, expected), where


def test_forward_with_aux_is_forward_with_every_layer_and_the_proposals(model, tokenizer, cfg):
    """forward_with_aux's final outputs are forward's; each earlier layer's outputs are, bit for bit, what
    forward gives with the decoder cut after that layer; the proposals have forward's shapes and caption
    mask."""
    import copy

    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 97, 150)  # odd sizes: every padding path of the backbone runs
    text = tokenize(["a red car . the man on the grass ?", "person,tree."], tokenizer, cfg)  # padded row
    got = model.forward_with_aux(pixels, *text)  # with autograd on, as in training
    assert list(got) == ["pred_logits", "pred_boxes", "aux", "enc"]
    assert len(got["aux"]) == cfg.num_decoder_layers - 1 and got["pred_logits"].requires_grad
    with torch.no_grad():
        logits, boxes = model(pixels, *text)
    assert_bit_identical({"pred_logits": got["pred_logits"], "pred_boxes": got["pred_boxes"]},
                         {"pred_logits": logits, "pred_boxes": boxes})
    for layers, aux in enumerate(got["aux"], start=1):
        cut = copy.deepcopy(model)
        cut.transformer.decoder.layers = cut.transformer.decoder.layers[:layers]
        with torch.no_grad():
            expected = dict(zip(("pred_logits", "pred_boxes"), cut(pixels, *text)))
        assert_bit_identical(aux, expected, f"aux[{layers - 1}]")
    enc = got["enc"]
    assert list(enc) == ["pred_logits", "pred_boxes"]
    assert enc["pred_logits"].shape == logits.shape and enc["pred_boxes"].shape == boxes.shape
    assert torch.equal(torch.isfinite(enc["pred_logits"]), torch.isfinite(logits))  # the caption's tokens only
    assert bool(((enc["pred_boxes"] >= 0) & (enc["pred_boxes"] <= 1)).all())


def match_queries(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Index of the closest expected query for each actual one (near-tied top-k scores may swap ranks)."""
    cost = np.abs(expected[:, None, :] - actual[None, :, :]).max(-1)
    return cost.argmin(0)


def test_onnx_runtime_parity(model, tokenizer, cfg, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    names = list(ONNX_INPUT_NAMES)
    example = (torch.randn(1, 3, 96, 128), *tokenize("dog,cat.", tokenizer, cfg))
    path = tmp_path / "grounding_dino_tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice, torch's own tracer notes
        torch.onnx.export(
            model, example, str(path), dynamo=False, opset_version=17, input_names=names,
            output_names=list(ONNX_OUTPUT_NAMES), dynamic_axes=ONNX_DYNAMIC_AXES,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # another batch size, image size and text length than the export example
    text = tokenize(["a red car . the man on the grass ?", "person,tree.", "sky."], tokenizer, cfg)
    pixels = torch.randn(3, 3, 150, 97)
    with torch.no_grad():
        ref_logits, ref_boxes = (t.numpy() for t in model(pixels, *text))
    got_logits, got_boxes = session.run(None, {n: t.numpy() for n, t in zip(names, (pixels, *text))})
    assert got_logits.shape == ref_logits.shape and got_boxes.shape == ref_boxes.shape
    assert np.array_equal(np.isfinite(got_logits), np.isfinite(ref_logits))
    for b in range(3):
        finite = np.isfinite(ref_logits[b, 0])
        ref = np.concatenate([ref_logits[b][:, finite], ref_boxes[b]], axis=1)
        got = np.concatenate([got_logits[b][:, finite], got_boxes[b]], axis=1)
        order = match_queries(ref, got)
        assert sorted(order.tolist()) == list(range(cfg.num_queries)), "ONNX queries are a permutation of torch's"
        rel = np.abs(got - ref[order]).max() / np.abs(ref).max()
        assert rel <= 1e-4, rel
