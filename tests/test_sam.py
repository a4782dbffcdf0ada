"""SAM (bubogpt.grounding.sam): official checkpoint layout, parameter counts, ONNX parity, pre/post-processing."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from bubogpt.grounding.sam import (
    SAM_IGNORED_KEYS,
    SAM_PRESETS,
    SamCheckpointError,
    SamConfig,
    SamImageEncoder,
    SamPromptDecoder,
    get_preprocess_shape,
    inverse_transform_boxes,
    load_sam_checkpoint,
    masks_from_logits,
    postprocess_masks,
    preprocess_image,
    transform_boxes,
)

TINY = SAM_PRESETS["tiny"]


# --------------------------------------------------------------------------------------------------
# The official layout, written out by hand from segment_anything/modeling/*.py (ImageEncoderViT with
# use_rel_pos=True, PromptEncoder, MaskDecoder + TwoWayTransformer as build_sam.py wires them), so
# that it does not depend on the module under test.
# --------------------------------------------------------------------------------------------------


def official_sam_shapes(cfg: SamConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the official `Sam.state_dict()` with its shape (pixel_mean/std are non-persistent)."""
    d, e, m = cfg.encoder_embed_dim, cfg.prompt_embed_dim, cfg.mask_in_chans
    g, hd, mlp = cfg.img_size // cfg.patch_size, cfg.encoder_embed_dim // cfg.encoder_num_heads, int(d * 4.0)
    s: dict[str, tuple[int, ...]] = {
        "image_encoder.patch_embed.proj.weight": (d, 3, cfg.patch_size, cfg.patch_size),
        "image_encoder.patch_embed.proj.bias": (d,),
        "image_encoder.pos_embed": (1, g, g, d),
    }
    for i in range(cfg.encoder_depth):
        b = f"image_encoder.blocks.{i}."
        side = g if i in cfg.encoder_global_attn_indexes else cfg.encoder_window_size
        s.update({
            b + "norm1.weight": (d,), b + "norm1.bias": (d,),
            b + "attn.rel_pos_h": (2 * side - 1, hd), b + "attn.rel_pos_w": (2 * side - 1, hd),
            b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "norm2.weight": (d,), b + "norm2.bias": (d,),
            b + "mlp.lin1.weight": (mlp, d), b + "mlp.lin1.bias": (mlp,),
            b + "mlp.lin2.weight": (d, mlp), b + "mlp.lin2.bias": (d,),
        })
    out = cfg.encoder_out_chans
    s.update({
        "image_encoder.neck.0.weight": (out, d, 1, 1),
        "image_encoder.neck.1.weight": (out,), "image_encoder.neck.1.bias": (out,),
        "image_encoder.neck.2.weight": (out, out, 3, 3),
        "image_encoder.neck.3.weight": (out,), "image_encoder.neck.3.bias": (out,),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, e // 2),  # a buffer
        **{f"prompt_encoder.point_embeddings.{i}.weight": (1, e) for i in range(4)},
        "prompt_encoder.not_a_point_embed.weight": (1, e),
        "prompt_encoder.mask_downscaling.0.weight": (m // 4, 1, 2, 2),
        "prompt_encoder.mask_downscaling.0.bias": (m // 4,),
        "prompt_encoder.mask_downscaling.1.weight": (m // 4,), "prompt_encoder.mask_downscaling.1.bias": (m // 4,),
        "prompt_encoder.mask_downscaling.3.weight": (m, m // 4, 2, 2),
        "prompt_encoder.mask_downscaling.3.bias": (m,),
        "prompt_encoder.mask_downscaling.4.weight": (m,), "prompt_encoder.mask_downscaling.4.bias": (m,),
        "prompt_encoder.mask_downscaling.6.weight": (e, m, 1, 1),
        "prompt_encoder.mask_downscaling.6.bias": (e,),
        "prompt_encoder.no_mask_embed.weight": (1, e),
    })

    def attention(prefix: str, internal: int) -> None:
        for p in ("q_proj", "k_proj", "v_proj"):
            s[f"{prefix}.{p}.weight"], s[f"{prefix}.{p}.bias"] = (internal, e), (internal,)
        s[f"{prefix}.out_proj.weight"], s[f"{prefix}.out_proj.bias"] = (e, internal), (e,)

    half = e // 2  # attention_downsample_rate 2 for the cross attentions
    for i in range(cfg.decoder_depth):
        b = f"mask_decoder.transformer.layers.{i}."
        attention(b + "self_attn", e)
        attention(b + "cross_attn_token_to_image", half)
        attention(b + "cross_attn_image_to_token", half)
        s.update({
            b + "mlp.lin1.weight": (cfg.decoder_mlp_dim, e), b + "mlp.lin1.bias": (cfg.decoder_mlp_dim,),
            b + "mlp.lin2.weight": (e, cfg.decoder_mlp_dim), b + "mlp.lin2.bias": (e,),
            **{f"{b}norm{n}.{t}": (e,) for n in (1, 2, 3, 4) for t in ("weight", "bias")},
        })
    attention("mask_decoder.transformer.final_attn_token_to_image", half)
    tokens = cfg.num_multimask_outputs + 1
    s.update({
        "mask_decoder.transformer.norm_final_attn.weight": (e,),
        "mask_decoder.transformer.norm_final_attn.bias": (e,),
        "mask_decoder.iou_token.weight": (1, e),
        "mask_decoder.mask_tokens.weight": (tokens, e),
        "mask_decoder.output_upscaling.0.weight": (e, e // 4, 2, 2),  # ConvTranspose2d: [in, out, k, k]
        "mask_decoder.output_upscaling.0.bias": (e // 4,),
        "mask_decoder.output_upscaling.1.weight": (e // 4,), "mask_decoder.output_upscaling.1.bias": (e // 4,),
        "mask_decoder.output_upscaling.3.weight": (e // 4, e // 8, 2, 2),
        "mask_decoder.output_upscaling.3.bias": (e // 8,),
    })
    for j in range(tokens):
        for k, (fan_out, fan_in) in enumerate([(e, e), (e, e), (e // 8, e)]):
            s[f"mask_decoder.output_hypernetworks_mlps.{j}.layers.{k}.weight"] = (fan_out, fan_in)
            s[f"mask_decoder.output_hypernetworks_mlps.{j}.layers.{k}.bias"] = (fan_out,)
    widths = [e] + [cfg.iou_head_hidden_dim] * (cfg.iou_head_depth - 1) + [tokens]
    for k in range(cfg.iou_head_depth):
        s[f"mask_decoder.iou_prediction_head.layers.{k}.weight"] = (widths[k + 1], widths[k])
        s[f"mask_decoder.iou_prediction_head.layers.{k}.bias"] = (widths[k + 1],)
    return s


_RENAMED = {  # the only official names we do not mirror (box corners of the 4 point embeddings)
    "prompt_encoder.point_embeddings.2.weight": "prompt_encoder.box_corner_embeddings.0.weight",
    "prompt_encoder.point_embeddings.3.weight": "prompt_encoder.box_corner_embeddings.1.weight",
}


def expected_target(official_key: str) -> tuple[str, str] | None:
    """(network, our name) an official key must land in; None for the documented dropped keys."""
    if official_key in SAM_IGNORED_KEYS:
        return None
    if official_key.startswith("image_encoder."):
        return "encoder", official_key.removeprefix("image_encoder.")
    return "decoder", _RENAMED.get(official_key, official_key)


def synthetic_official_state(cfg: SamConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Official key names and shapes, a distinct random value range per tensor (tensor i in [i, i+1))."""
    gen = torch.Generator().manual_seed(seed)
    shapes = official_sam_shapes(cfg)
    return {k: torch.rand(shape, generator=gen) + i for i, (k, shape) in enumerate(sorted(shapes.items()))}


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Small random weights everywhere (the default init zeros rel_pos/pos_embed, hiding bugs); norms near 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            noise = torch.randn(tensor.shape, generator=gen)
            is_norm_scale = name.endswith("weight") and tensor.ndim == 1
            tensor.copy_(1 + 0.1 * noise if is_norm_scale else 0.2 * noise)
    return module.eval()


# --------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------


def test_every_official_tensor_lands_in_its_parameter(tmp_path):
    state = synthetic_official_state(TINY)
    torch.save(state, tmp_path / "sam_tiny.pth")  # the file path, as users pass it
    encoder, decoder = SamImageEncoder(TINY), SamPromptDecoder(TINY)
    report = load_sam_checkpoint(encoder, decoder, tmp_path / "sam_tiny.pth")

    ours = {"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}
    filled = set()
    for key, value in state.items():
        target = expected_target(key)
        if target is None:
            assert key in report.ignored
            continue
        network, name = target
        assert torch.equal(ours[network][name], value), f"{key} did not land in {network}.{name}"
        filled.add(target)
    every = {(network, name) for network, sd in ours.items() for name in sd}
    assert filled == every, f"not filled from the file: {sorted(every - filled)}"
    assert sorted(report.ignored) == sorted(SAM_IGNORED_KEYS)
    assert len(report.loaded) == len(every)


def test_pixel_constants_are_checked_when_present():
    state = synthetic_official_state(TINY)
    state["pixel_mean"] = torch.tensor(TINY.pixel_mean).view(3, 1, 1)
    state["pixel_std"] = torch.tensor(TINY.pixel_std).view(3, 1, 1)
    load_sam_checkpoint(SamImageEncoder(TINY), SamPromptDecoder(TINY), state)
    state["pixel_std"] = torch.ones(3, 1, 1)
    with pytest.raises(SamCheckpointError, match="pixel_std"):
        load_sam_checkpoint(SamImageEncoder(TINY), SamPromptDecoder(TINY), state)


@pytest.mark.parametrize(
    "break_it, named",
    [
        (
            lambda s: s.__setitem__("image_encoder.blocks.1.attn.rel_pos_h", torch.zeros(5, 32)),
            "blocks.1.attn.rel_pos_h: checkpoint (5, 32) vs model (31, 32)",
        ),
        (lambda s: s.pop("mask_decoder.output_hypernetworks_mlps.2.layers.1.bias"), "mlps.2.layers.1.bias"),
        (lambda s: s.pop("prompt_encoder.point_embeddings.3.weight"), "box_corner_embeddings.1.weight"),
        (lambda s: s.__setitem__("mask_decoder.extra_head.weight", torch.zeros(1)), "mask_decoder.extra_head.weight"),
    ],
    ids=["mis-shaped", "missing", "missing-renamed", "unexpected"],
)
def test_bad_checkpoints_name_the_key(break_it, named):
    state = synthetic_official_state(TINY)
    break_it(state)
    encoder = SamImageEncoder(TINY)
    before = encoder.pos_embed.detach().clone()
    with pytest.raises(SamCheckpointError, match=re.escape(named)):
        load_sam_checkpoint(encoder, SamPromptDecoder(TINY), state)
    assert torch.equal(encoder.pos_embed, before), "nothing may be copied when the check fails"


def test_one_network_alone_and_wrong_preset():
    state = synthetic_official_state(TINY)
    encoder = SamImageEncoder(TINY)
    report = load_sam_checkpoint(encoder, None, state)
    assert torch.equal(encoder.pos_embed, state["image_encoder.pos_embed"])
    assert "mask_decoder.iou_token.weight" in report.ignored
    deeper = dataclasses.replace(TINY, encoder_depth=3)
    with pytest.raises(SamCheckpointError, match=r"blocks\.2\.norm1\.weight"):
        load_sam_checkpoint(SamImageEncoder(deeper), None, state)


# --------------------------------------------------------------------------------------------------
# Sizes of the real presets
# --------------------------------------------------------------------------------------------------

# Parameters (buffers excluded) of the official `sam_model_registry[name]()`, counted with
# `sum(p.numel() for p in sam.parameters())` on the official segment-anything code (commit dca509f,
# build_sam.py, modules instantiated under torch.device("meta")). vit_h matches the widely quoted
# 641,090,608. Cross-checked below against the hand-written layout.
OFFICIAL_PARAMS = {"vit_h": 641_090_608, "vit_l": 312_342_832, "vit_b": 93_735_472}
# The official prompt encoder + mask decoder: 6,220 + 4,058,340 parameters, identical for all three.
OFFICIAL_PROMPT_AND_DECODER = 6_220 + 4_058_340


@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_parameter_counts_match_the_official_models(name):
    cfg = SAM_PRESETS[name]
    with torch.device("meta"):
        encoder, decoder = SamImageEncoder(cfg), SamPromptDecoder(cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    shapes = official_sam_shapes(cfg)
    buffers = {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"}
    by_hand = sum(math.prod(s) for k, s in shapes.items() if k not in buffers)
    dropped = sum(math.prod(shapes[k]) for k in SAM_IGNORED_KEYS)  # 5,452: point and mask prompt paths
    assert by_hand == OFFICIAL_PARAMS[name]
    assert dropped == 5_452
    assert count(encoder) + count(decoder) + dropped == OFFICIAL_PARAMS[name]
    assert count(decoder) + dropped == OFFICIAL_PROMPT_AND_DECODER
    # and the networks hold exactly the official tensors we map (same shapes)
    ours = {f"e.{k}": tuple(v.shape) for k, v in encoder.state_dict().items()}
    ours |= {f"d.{k}": tuple(v.shape) for k, v in decoder.state_dict().items()}
    mapped = {}
    for key, shape in shapes.items():
        if (target := expected_target(key)) is not None:
            mapped[f"{target[0][0]}.{target[1]}"] = shape
    assert ours == mapped


# --------------------------------------------------------------------------------------------------
# Networks: shapes, box folding, ONNX parity
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_networks() -> tuple[SamImageEncoder, SamPromptDecoder]:
    return randomize_(SamImageEncoder(TINY), 1), randomize_(SamPromptDecoder(TINY), 2)


def _boxes(batch: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy0 = torch.rand(batch, n, 2, generator=gen) * TINY.img_size * 0.6
    wh = torch.rand(batch, n, 2, generator=gen) * TINY.img_size * 0.4 + 4
    return torch.cat([xy0, xy0 + wh], dim=-1)


def test_shapes_and_boxes_are_independent_rows(tiny_networks):
    encoder, decoder = tiny_networks
    with torch.no_grad():
        pixels = torch.randn(2, 3, TINY.img_size, TINY.img_size, generator=torch.Generator().manual_seed(3))
        embeddings = encoder(pixels)
        assert embeddings.shape == (2, TINY.prompt_embed_dim, TINY.embed_size, TINY.embed_size)
        boxes = _boxes(2, 3, seed=4)
        masks, iou = decoder(embeddings, boxes)
        assert masks.shape == (2, 3, TINY.low_res_size, TINY.low_res_size) and iou.shape == (2, 3)
        # folding N into the batch must equal running each (image, box) pair alone
        alone, alone_iou = decoder(embeddings[1:2], boxes[1:2, 2:3])
        torch.testing.assert_close(masks[1, 2], alone[0, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(iou[1, 2], alone_iou[0, 0], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(masks[1, 2], masks[1, 1])  # different boxes, different masks


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_onnx_runtime_parity_with_dynamic_batch_and_boxes(tiny_networks, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    encoder, decoder = tiny_networks
    gen = torch.Generator().manual_seed(5)
    size = TINY.img_size

    enc_path = tmp_path / "sam_image_encoder.onnx"
    torch.onnx.export(
        encoder, (torch.randn(1, 3, size, size, generator=gen),), str(enc_path), dynamo=False, opset_version=17,
        input_names=["pixels"], output_names=["image_embeddings"],
        dynamic_axes={"pixels": {0: "batch"}, "image_embeddings": {0: "batch"}},
    )
    dec_path = tmp_path / "sam_prompt_decoder.onnx"
    example_embeddings = torch.randn(1, TINY.prompt_embed_dim, TINY.embed_size, TINY.embed_size, generator=gen)
    torch.onnx.export(
        decoder, (example_embeddings, _boxes(1, 3, seed=6)), str(dec_path), dynamo=False, opset_version=17,
        input_names=["image_embeddings", "boxes"], output_names=["low_res_masks", "iou_predictions"],
        dynamic_axes={
            "image_embeddings": {0: "batch"}, "boxes": {0: "batch", 1: "num_boxes"},
            "low_res_masks": {0: "batch", 1: "num_boxes"}, "iou_predictions": {0: "batch", 1: "num_boxes"},
        },
    )

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    pixels = torch.randn(2, 3, size, size, generator=gen)  # batch 2: not the export example's 1
    boxes = _boxes(2, 5, seed=7)  # 5 boxes: not the example's 3
    with torch.no_grad():
        ref_embeddings = encoder(pixels)
        ref_masks, ref_iou = decoder(ref_embeddings, boxes)
    session = ort.InferenceSession(str(enc_path), options, providers=["CPUExecutionProvider"])
    (ort_embeddings,) = session.run(None, {"pixels": pixels.numpy()})
    session = ort.InferenceSession(str(dec_path), options, providers=["CPUExecutionProvider"])
    ort_masks, ort_iou = session.run(None, {"image_embeddings": ref_embeddings.numpy(), "boxes": boxes.numpy()})

    assert ort_embeddings.shape == tuple(ref_embeddings.shape)
    assert ort_masks.shape == tuple(ref_masks.shape) and ort_iou.shape == (2, 5)
    errors = {
        "encoder": _rel_err(ort_embeddings, ref_embeddings.numpy()),
        "masks": _rel_err(ort_masks, ref_masks.numpy()),
        "iou": _rel_err(ort_iou, ref_iou.numpy()),
    }
    print(f"ONNX Runtime vs torch, max relative error: {errors}")
    assert max(errors.values()) <= 1e-4, errors


# --------------------------------------------------------------------------------------------------
# Pre- and post-processing
# --------------------------------------------------------------------------------------------------

VIT = SAM_PRESETS["vit_h"]  # S = 1024; pre/post-processing needs no network


@pytest.mark.parametrize(
    "hw, resized",
    [((480, 640), (768, 1024)), ((640, 480), (1024, 768)), ((200, 1000), (205, 1024)), ((1024, 1024), (1024, 1024))],
)
def test_longest_side_resize_shape(hw, resized):
    assert get_preprocess_shape(*hw, 1024) == resized  # 200 * 1.024 = 204.8 -> 205 (rounded half up)


def test_preprocess_image_resizes_normalises_and_pads():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    pixels, resized = preprocess_image(image, TINY)
    assert resized == (192, 256) and pixels.shape == (3, 256, 256) and pixels.dtype == np.float32
    by_hand = np.asarray(Image.fromarray(image).resize((256, 192), Image.BILINEAR), dtype=np.float32)
    mean, std = np.array([123.675, 116.28, 103.53], np.float32), np.array([58.395, 57.12, 57.375], np.float32)
    by_hand = (by_hand - mean) / std
    np.testing.assert_allclose(pixels[:, :192, :], by_hand.transpose(2, 0, 1), rtol=0, atol=1e-6)
    assert not pixels[:, 192:, :].any()  # zero padding after normalisation, as official `Sam.preprocess`
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(image.astype(np.float32), TINY)


@pytest.mark.parametrize(
    "hw, box, expected",
    [
        ((480, 640), [10, 20, 300, 400], [16, 32, 480, 640]),  # x1.6, y1.6
        ((640, 480), [10, 20, 300, 400], [16, 32, 480, 640]),
        ((200, 1000), [100, 50, 900, 150], [102.4, 51.25, 921.6, 153.75]),  # x 1024/1000, y 205/200
    ],
)
def test_boxes_to_the_input_frame_and_back(hw, box, expected):
    mapped = transform_boxes([box, [0, 0, hw[1], hw[0]]], hw, VIT)
    np.testing.assert_allclose(mapped[0], expected, rtol=1e-6)
    resized = get_preprocess_shape(*hw, VIT.img_size)
    np.testing.assert_allclose(mapped[1], [0, 0, resized[1], resized[0]], rtol=1e-6)  # whole image -> resized area
    np.testing.assert_allclose(inverse_transform_boxes(mapped, hw, VIT)[0], box, rtol=1e-5)


def _rectangle_logits(low_res: tuple[int, int, int, int], side: int = 256) -> torch.Tensor:
    """+10 inside [y0, y1) x [x0, x1) of a side x side low-res grid, -10 outside."""
    y0, y1, x0, x1 = low_res
    logits = torch.full((1, 1, side, side), -10.0)
    logits[..., y0:y1, x0:x1] = 10.0
    return logits


def test_postprocess_puts_a_rectangle_at_its_original_pixels():
    # 640x480 landscape: S/original = 1.6, the low-res grid is S/4. Original rectangle x in [100, 300),
    # y in [50, 250) -> input frame x [160, 480), y [80, 400) -> low-res x [40, 120), y [20, 100).
    # The logits are antisymmetric across each edge, so both bilinear steps cross zero exactly on it;
    # only the 4 corner pixels fall out (bilinear of a corner is -10 + 20 * a * b with a, b < 1).
    logits = _rectangle_logits((20, 100, 40, 120))
    full = postprocess_masks(logits, (768, 1024), (480, 640), VIT)
    assert full.shape == (1, 1, 480, 640)
    expected = torch.zeros(480, 640, dtype=torch.bool)
    expected[50:250, 100:300] = True
    for y, x in [(50, 100), (50, 299), (249, 100), (249, 299)]:
        expected[y, x] = False
    assert torch.equal(masks_from_logits(full)[0, 0], expected)


@pytest.mark.parametrize("hw", [(640, 480), (200, 1000)])
def test_postprocess_other_aspect_ratios_and_padding_crop(hw):
    h, w = hw
    resized = get_preprocess_shape(h, w, VIT.img_size)
    # a rectangle in the middle of the original picture, mapped to low-res cells (S/4 grid)
    x0, x1, y0, y1 = w // 4, 3 * w // 4, h // 4, 3 * h // 4
    sx, sy = resized[1] / w / 4, resized[0] / h / 4
    logits = _rectangle_logits((round(y0 * sy), round(y1 * sy), round(x0 * sx), round(x1 * sx)))
    mask = masks_from_logits(postprocess_masks(logits[0], resized, hw, VIT))[0]  # [..., h, w] without a batch
    assert mask.shape == (h, w)
    expected = torch.zeros(h, w, dtype=torch.bool)
    expected[y0:y1, x0:x1] = True
    # within one low-res cell (4 input pixels = 4 / scale original pixels) of the true edges
    tol = math.ceil(4 * w / resized[1]) + 1
    assert (mask & ~expected).sum() <= tol * 2 * ((y1 - y0) + (x1 - x0))
    assert (~mask & expected).sum() <= tol * 2 * ((y1 - y0) + (x1 - x0))
    assert mask[(y0 + y1) // 2, (x0 + x1) // 2] and not mask[0, 0] and not mask[-1, -1]
    # the padding region of the input frame must not leak in: a logit blob only in the padding
    pad_only = torch.full((1, 256, 256), -10.0)
    pad_only[:, resized[0] // 4 + 1 :, :] = 10.0
    pad_only[:, :, resized[1] // 4 + 1 :] = 10.0
    assert not masks_from_logits(postprocess_masks(pad_only, resized, hw, VIT)).any()
