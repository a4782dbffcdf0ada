"""RAM tagger: official checkpoint names, thresholds, preprocessing, ONNX parity (tiny preset, CPU)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bubogpt.grounding.ram import (
    RAM_IGNORED,
    RAM_PRESETS,
    TINY_TAG_LIST,
    TINY_THRESHOLDS,
    RamCheckpointError,
    RamConfig,
    RamTagger,
    class_thresholds,
    load_ram_checkpoint,
    load_tag_list,
    load_thresholds,
    preprocess_image,
    ram_key_map,
    relative_position_index,
    select_tags,
    shifted_window_mask,
)

TINY = RAM_PRESETS["tiny"]

# Parameters of the official RAM tagging path at Swin-L / 384 px (visual_encoder, image_proj, label_embed,
# wordvec_proj, tagging_head, fc; not the captioning tag_encoder / text_decoder). Obtained once by
# instantiating the official module files (BuboGPT's ram/models/swin_transformer.py with config_swinL_384.json,
# and bert.py's BertModel with q2l_config.json, encoder_width=512, after RAM's del_selfattention) with timm's
# three helpers stubbed, summing p.numel(); the same run listed 366 parameter keys (plus 35 buffers).
OFFICIAL_RAM_SWIN_L_PARAMS = 212_117_045
OFFICIAL_RAM_SWIN_L_PARAM_KEYS = 366


# --------------------------------------------------------------------------------------------------
# A checkpoint with the official key names, written from the official module definitions
# --------------------------------------------------------------------------------------------------


def official_state_dict(cfg: RamConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """RAM's `model.state_dict()` layout (ram.py / swin_transformer.py / bert.py) at `cfg`'s sizes.

    Written independently of `ram_key_map`: names and shapes follow the official modules. Every tensor
    gets its own random values; buffers (relative_position_index, attn_mask) are included as the
    official state dict has them; a few captioning-branch tensors stand in for tag_encoder/text_decoder.
    """
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def put(name: str, *shape: int) -> None:
        state[name] = torch.randn(*shape, generator=gen)

    def linear(name: str, out_features: int, in_features: int, bias: bool = True) -> None:
        put(f"{name}.weight", out_features, in_features)
        if bias:
            put(f"{name}.bias", out_features)

    def norm(name: str, dim: int) -> None:
        put(f"{name}.weight", dim)
        put(f"{name}.bias", dim)

    e, p = cfg.embed_dim, cfg.patch_size
    put("visual_encoder.patch_embed.proj.weight", e, 3, p, p)
    put("visual_encoder.patch_embed.proj.bias", e)
    norm("visual_encoder.patch_embed.norm", e)
    grid = cfg.image_size // p
    for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
        dim, res = e * 2**i, grid // 2**i
        # SwinTransformerBlock: a map no larger than the window is one window, unshifted.
        window, shift = (res, 0) if res <= cfg.window_size else (cfg.window_size, cfg.window_size // 2)
        for j in range(depth):
            b = f"visual_encoder.layers.{i}.blocks.{j}"
            norm(f"{b}.norm1", dim)
            put(f"{b}.attn.relative_position_bias_table", (2 * window - 1) ** 2, heads)
            state[f"{b}.attn.relative_position_index"] = torch.randint(0, 9, (window**2, window**2), generator=gen)
            linear(f"{b}.attn.qkv", 3 * dim, dim)
            linear(f"{b}.attn.proj", dim, dim)
            norm(f"{b}.norm2", dim)
            linear(f"{b}.mlp.fc1", 4 * dim, dim)
            linear(f"{b}.mlp.fc2", dim, 4 * dim)
            if j % 2 and shift:
                put(f"{b}.attn_mask", (res // window) ** 2, window**2, window**2)
        if i < len(cfg.depths) - 1:
            linear(f"visual_encoder.layers.{i}.downsample.reduction", 2 * dim, 4 * dim, bias=False)
            norm(f"visual_encoder.layers.{i}.downsample.norm", 4 * dim)
    width = e * 2 ** (len(cfg.depths) - 1)
    norm("visual_encoder.norm", width)
    j, h = cfg.joint_dim, cfg.head_hidden
    linear("image_proj", j, width)
    put("label_embed", cfg.num_tags, j)
    linear("wordvec_proj", h, j)
    for layer in range(cfg.head_layers):
        t = f"tagging_head.encoder.layer.{layer}"
        linear(f"{t}.crossattention.self.query", h, h)
        linear(f"{t}.crossattention.self.key", h, j)  # q2l encoder_width = RAM's 512
        linear(f"{t}.crossattention.self.value", h, j)
        linear(f"{t}.crossattention.output.dense", h, h)
        norm(f"{t}.crossattention.output.LayerNorm", h)
        linear(f"{t}.intermediate.dense", cfg.head_intermediate, h)
        linear(f"{t}.output.dense", h, cfg.head_intermediate)
        norm(f"{t}.output.LayerNorm", h)
    linear("fc", 1, h)
    # The captioning branch we do not build (a few representative names).
    put("tag_encoder.encoder.layer.0.attention.self.query.weight", 8, 8)
    put("tag_encoder.embeddings.word_embeddings.weight", 10, 8)
    put("text_decoder.bert.encoder.layer.0.crossattention.self.key.weight", 8, 8)
    put("text_decoder.cls.predictions.bias", 10)
    return state


def is_ignored_official(key: str) -> bool:
    return key.startswith(("tag_encoder.", "text_decoder.")) or key.endswith(("relative_position_index", "attn_mask"))


def randomize(model: RamTagger, seed: int = 0) -> RamTagger:
    """O(1) activations and well-spread probabilities (the default init gives probabilities near 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if re.search(r"norm\d?\.weight$", name):  # every LayerNorm gain
                param.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif param.ndim >= 2 and "table" not in name and name != "label_embed":
                param.copy_(noise / math.sqrt(param[0].numel()))  # fan-in scaling
            else:
                param.copy_(noise)
    return model


@pytest.fixture(scope="module")
def tiny_model() -> RamTagger:
    return randomize(RamTagger(TINY)).eval()


# --------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------


def test_official_checkpoint_loads_every_tensor(tmp_path):
    state = official_state_dict(TINY)
    path = tmp_path / "ram_tiny.pth"
    torch.save({"model": state, "epoch": 3}, path)  # the released container: {"model": ..., ...}
    model = RamTagger(TINY)
    report = load_ram_checkpoint(model, path)

    needed = {k for k in state if not is_ignored_official(k)}
    assert set(report.loaded.values()) == needed
    assert set(report.loaded) == set(dict(model.named_parameters()))
    assert set(report.ignored) == set(state) - needed
    ours = model.state_dict()
    for our_name, official in report.loaded.items():
        assert torch.equal(ours[our_name], state[official]), our_name

    # Spot checks written by hand, so a consistent-but-wrong rename in the key map cannot pass.
    pairs = {
        "tagging_head.layers.1.cross_attn.q_proj.weight": "tagging_head.encoder.layer.1.crossattention.self.query.weight",
        "tagging_head.layers.1.cross_attn.k_proj.bias": "tagging_head.encoder.layer.1.crossattention.self.key.bias",
        "tagging_head.layers.0.cross_attn.v_proj.weight": "tagging_head.encoder.layer.0.crossattention.self.value.weight",
        "tagging_head.layers.0.cross_attn.out_proj.weight": "tagging_head.encoder.layer.0.crossattention.output.dense.weight",
        "tagging_head.layers.0.cross_attn.norm.weight": "tagging_head.encoder.layer.0.crossattention.output.LayerNorm.weight",
        "tagging_head.layers.1.mlp.fc1.weight": "tagging_head.encoder.layer.1.intermediate.dense.weight",
        "tagging_head.layers.1.mlp.fc2.bias": "tagging_head.encoder.layer.1.output.dense.bias",
        "tagging_head.layers.1.mlp.norm.bias": "tagging_head.encoder.layer.1.output.LayerNorm.bias",
        "visual_encoder.layers.2.blocks.1.attn.relative_position_bias_table": "visual_encoder.layers.2.blocks.1.attn.relative_position_bias_table",
        "visual_encoder.layers.0.downsample.reduction.weight": "visual_encoder.layers.0.downsample.reduction.weight",
        "label_embed": "label_embed",
        "wordvec_proj.weight": "wordvec_proj.weight",
        "fc.bias": "fc.bias",
    }  # fmt: skip
    for our_name, official in pairs.items():
        assert torch.equal(ours[our_name], state[official]), our_name

    # The checkpoint's buffers are ignored, ours are recomputed from the window size.
    block = model.visual_encoder.layers[0].blocks[1]
    assert torch.equal(block.attn.relative_position_index, relative_position_index(4))
    assert not torch.equal(block.attn.relative_position_index, state["visual_encoder.layers.0.blocks.1.attn.relative_position_index"])


def test_every_ignore_rule_is_exercised_by_the_official_layout():
    state = official_state_dict(TINY)
    used = {pattern for pattern, _ in RAM_IGNORED if any(re.fullmatch(pattern, k) for k in state)}
    defensive = {p for p, why in RAM_IGNORED if "deleted by RAM" in why}
    assert used | defensive == {p for p, _ in RAM_IGNORED}


def test_legacy_vision_multi_prefix_is_renamed():
    state = official_state_dict(TINY, seed=1)
    legacy = {k.replace("tagging_head.", "vision_multi.", 1): v for k, v in state.items()}
    model = RamTagger(TINY)
    load_ram_checkpoint(model, {"model": legacy})
    assert torch.equal(model.tagging_head.layers[0].cross_attn.q_proj.weight, state["tagging_head.encoder.layer.0.crossattention.self.query.weight"])


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda s: s.pop("tagging_head.encoder.layer.1.output.dense.weight"), ["1 missing", "tagging_head.encoder.layer.1.output.dense.weight"]),
        (lambda s: s.__setitem__("decoder.head.weight", torch.zeros(2)), ["1 unexpected", "decoder.head.weight"]),
        (lambda s: s.__setitem__("label_embed", torch.zeros(25, TINY.joint_dim)), ["1 mis-shaped", "label_embed", "(25, 32)", "(24, 32)"]),
        # A relative position table for another window size (the official loader would interpolate it).
        (lambda s: s.__setitem__("visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table", torch.zeros(9, 2)),
         ["mis-shaped", "layers.0.blocks.0.attn.relative_position_bias_table"]),
    ],
)  # fmt: skip
def test_bad_checkpoints_raise_naming_the_keys(corrupt, expected):
    state = official_state_dict(TINY)
    corrupt(state)
    model = RamTagger(TINY)
    before = model.fc.weight.clone()
    with pytest.raises(RamCheckpointError) as info:
        load_ram_checkpoint(model, {"model": state})
    assert isinstance(info.value, ValueError)
    for fragment in expected:
        assert fragment in str(info.value)
    assert torch.equal(model.fc.weight, before)  # nothing copied on failure


def test_wrong_preset_is_reported_as_mis_shaped():
    other = RamConfig(**{**TINY.__dict__, "embed_dim": 32, "num_heads": (2, 2, 4, 4)})
    with pytest.raises(RamCheckpointError, match="mis-shaped"):
        load_ram_checkpoint(RamTagger(TINY), {"model": official_state_dict(other)})


def test_identity_wordvec_proj_has_no_weights():
    cfg = RamConfig(**{**TINY.__dict__, "head_hidden": TINY.joint_dim, "head_intermediate": 64})
    state = {k: v for k, v in official_state_dict(cfg).items() if not k.startswith("wordvec_proj.")}
    model = RamTagger(cfg)
    load_ram_checkpoint(model, state)  # a flat state dict works too
    assert isinstance(model.wordvec_proj, torch.nn.Identity)


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------


def test_official_preset_parameter_count_matches_the_official_architecture():
    cfg = RAM_PRESETS["swin_l_384"]
    with torch.device("meta"):
        model = RamTagger(cfg)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_RAM_SWIN_L_PARAMS
    assert len(ram_key_map(cfg)) == OFFICIAL_RAM_SWIN_L_PARAM_KEYS == len(dict(model.named_parameters()))
    # Swin-L at 384: the last stage (12x12) is a single unshifted window; the tagging head sees 1 + 144 tokens.
    assert [cfg.stage_window(i) for i in range(4)] == [(12, 6), (12, 6), (12, 6), (12, 0)]
    assert cfg.num_image_tokens == 145 and cfg.vision_width == 1536


def test_swin_buffers_match_the_official_formulas():
    # Window 2: tokens (0,0),(0,1),(1,0),(1,1); index = (dh + 1) * 3 + (dw + 1), dh/dw = query - key.
    assert relative_position_index(2).tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    # 4x4 map, window 2, shift 1: region bands rows/cols {0,1}, {2}, {3}.
    mask = shifted_window_mask(4, 2, 1)
    assert mask.shape == (4, 4, 4)
    assert torch.equal(mask[0], torch.zeros(4, 4))  # top-left window: one region
    assert torch.equal(mask[1], torch.tensor([[0, -100, 0, -100], [-100, 0, -100, 0], [0, -100, 0, -100], [-100, 0, -100, 0.0]]))
    assert torch.equal(mask[3], torch.where(torch.eye(4, dtype=torch.bool), 0.0, -100.0))  # four regions


def test_ram_and_grounding_dino_share_one_swin():
    """Window attention and MLP come from bubogpt.grounding.swin for both backbones; no copy elsewhere."""
    import inspect
    import pathlib

    import bubogpt.grounding as grounding
    from bubogpt.grounding import swin
    from bubogpt.grounding.grounding_dino import GDINO_PRESETS, build_grounding_dino

    for backbone in (RamTagger(TINY).visual_encoder, build_grounding_dino(GDINO_PRESETS["tiny"]).backbone):
        blocks = [m for m in backbone.modules() if hasattr(m, "attn") and hasattr(m, "mlp")]
        assert blocks and all(type(b.attn) is swin.WindowAttention and type(b.mlp) is swin.SwinMlp for b in blocks)
    shared = [name for name, _ in inspect.getmembers(swin, inspect.isfunction) + inspect.getmembers(swin, inspect.isclass)
              if getattr(swin, name).__module__ == swin.__name__]
    root = pathlib.Path(grounding.__file__).parent
    for path in root.rglob("*.py"):
        if path.name != "swin.py":
            source = path.read_text()
            assert not [n for n in shared if f"def {n}(" in source or f"class {n}(" in source], path


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="not a multiple of window"):
        RamConfig(image_size=96, window_size=7)
    with pytest.raises(ValueError, match="delete_tag_index"):
        RamConfig(**{**TINY.__dict__, "delete_tag_index": (24,)})


def test_forward_shape_and_batch_independence(tiny_model):
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, TINY.image_size, TINY.image_size)
    with torch.no_grad():
        probs = tiny_model(pixels)
        single = tiny_model(pixels[1:2])
    assert probs.shape == (3, TINY.num_tags)
    assert ((probs > 0) & (probs < 1)).all()
    assert probs.std() > 0.05  # the randomized weights give spread-out probabilities
    torch.testing.assert_close(single[0], probs[1], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Thresholds and tag selection
# --------------------------------------------------------------------------------------------------


def test_probabilities_just_above_or_below_each_threshold():
    thresholds = torch.tensor(TINY_THRESHOLDS, dtype=torch.float32)
    above = torch.nextafter(thresholds, torch.tensor(2.0))
    below = torch.nextafter(thresholds, torch.tensor(-1.0))
    deleted = TINY.delete_tag_index
    kept = [t for i, t in enumerate(TINY_TAG_LIST) if i not in deleted]

    assert select_tags(above, thresholds, TINY_TAG_LIST, deleted) == kept
    assert select_tags(below, thresholds, TINY_TAG_LIST, deleted) == []
    assert select_tags(thresholds, thresholds, TINY_TAG_LIST, deleted) == []  # strictly greater, as RAM

    # Alternate above/below: exactly the "above" tags, in tag-index order.
    mixed = torch.where(torch.arange(len(thresholds)) % 3 == 0, above, below)
    expected = [t for i, t in enumerate(TINY_TAG_LIST) if i % 3 == 0 and i not in deleted]
    assert select_tags(mixed, thresholds, TINY_TAG_LIST, deleted) == expected
    assert select_tags(mixed.numpy(), thresholds.numpy(), TINY_TAG_LIST, deleted) == expected


def test_deleted_indices_never_appear():
    probs = torch.ones(len(TINY_TAG_LIST))
    tags = select_tags(probs, TINY_THRESHOLDS, TINY_TAG_LIST, deleted_indices=(0, 5, 23))
    assert "ball" not in tags and "building" not in tags and "water" not in tags
    assert len(tags) == len(TINY_TAG_LIST) - 3
    assert "food" not in select_tags(probs, TINY_THRESHOLDS, TINY_TAG_LIST, TINY.delete_tag_index)


def test_select_tags_checks_sizes():
    with pytest.raises(ValueError, match="sizes differ"):
        select_tags(torch.ones(3), [0.5, 0.5], ["a", "b", "c"])
    with pytest.raises(ValueError, match="one image"):
        select_tags(torch.ones(2, 3), [0.5] * 3, ["a", "b", "c"])


def test_network_to_tags_end_to_end():
    # Force every probability to 0.95: every tag clears its threshold (max 0.90) except the deleted one.
    model = randomize(RamTagger(TINY)).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.fill_(math.log(0.95 / 0.05))
        probs = model(torch.zeros(1, 3, TINY.image_size, TINY.image_size))[0]
    tags = select_tags(probs, TINY_THRESHOLDS, TINY_TAG_LIST, TINY.delete_tag_index)
    assert tags == [t for t in TINY_TAG_LIST if t != "food"]


def test_tag_and_threshold_files(tmp_path):
    (tmp_path / "tags.txt").write_text("dog\ncat\nhot dog\nswan\n", encoding="utf-8")
    (tmp_path / "thr.txt").write_text("0.9\n0.65\n", encoding="utf-8")
    assert load_tag_list(tmp_path / "tags.txt") == ["dog", "cat", "hot dog", "swan"]
    # RAM's rule: default 0.68 everywhere, the file overrides the first entries.
    thresholds = load_thresholds(tmp_path / "thr.txt", num_tags=4)
    assert thresholds.tolist() == pytest.approx([0.9, 0.65, 0.68, 0.68])
    assert load_thresholds(tmp_path / "thr.txt").tolist() == pytest.approx([0.9, 0.65])
    with pytest.raises(ValueError, match="3 thresholds for 2 tags"):
        class_thresholds([0.5, 0.5, 0.5], num_tags=2)
    (tmp_path / "bad.txt").write_text("0.9\nzebra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="one float per line"):
        load_thresholds(tmp_path / "bad.txt")
    (tmp_path / "gap.txt").write_text("dog\n\ncat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty tag"):
        load_tag_list(tmp_path / "gap.txt")


def test_tiny_vocabulary_is_consistent():
    assert len(TINY_TAG_LIST) == len(TINY_THRESHOLDS) == TINY.num_tags == 24
    assert list(TINY_TAG_LIST) == sorted(TINY_TAG_LIST) and len(set(TINY_TAG_LIST)) == 24


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


def test_preprocess_is_bilinear_resize_to_square_then_imagenet_normalise():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(50, 90, 3), dtype=np.uint8)  # not square: aspect is NOT kept
    image = Image.fromarray(array, mode="RGB")
    pixels = preprocess_image(image, TINY)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32

    resized = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (torch.from_numpy(resized).permute(2, 0, 1) / 255.0 - mean) / std  # ToTensor + Normalize
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)
    # Bilinear, not bicubic or nearest (they differ on random content).
    bicubic = np.asarray(image.resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float32)
    assert not np.allclose(resized, bicubic)


def test_preprocess_solid_colour_and_alpha():
    solid = preprocess_image(Image.new("RGB", (30, 70), (10, 128, 250)), TINY)
    expected = [(10 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (250 / 255 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert torch.allclose(solid[channel], torch.tensor(value), atol=1e-6)
    transparent = preprocess_image(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), TINY)
    white = preprocess_image(Image.new("RGB", (8, 8), (255, 255, 255)), TINY)
    assert torch.equal(transparent, white)  # alpha composited on white, as bubogpt.image.to_rgb


# --------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------


def test_onnx_runtime_matches_torch_with_dynamic_batch(tiny_model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "ram_tiny.onnx"
    example = torch.randn(1, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        torch.onnx.export(
            tiny_model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["pixels"],
            output_names=["probs"],
            dynamic_axes={"pixels": {0: "batch"}, "probs": {0: "batch"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.randn(2, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(2))
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        want = tiny_model(pixels).numpy()
    assert got.shape == (2, TINY.num_tags)
    relative = np.abs(got - want).max() / np.abs(want).max()
    assert relative <= 1e-4, relative
