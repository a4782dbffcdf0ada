"""The grounding pipeline: RAM tags -> Grounding DINO boxes -> SAM masks, on the built-in tiny models."""

import io
from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image

from bubogpt.defaults import default_model_dir
from bubogpt.grounding import grounding_dino as gdino
from bubogpt.grounding.pipeline import (
    clean_phrase,
    fill_small_holes,
    label_components,
    load_grounding,
    save_grounding,
)
from bubogpt.grounding.rle import decode


@pytest.fixture(scope="module")
def pipeline():
    return load_grounding(default_model_dir())


def image(width, height, seed=0):
    """A picture of the synthetic world (what the default's grounding nets were trained on), JPEG-decoded."""
    from training.world.scene import make_scene

    return Image.open(io.BytesIO(make_scene(seed, size=(width, height)).jpeg())).convert("RGB")


def bfs_components(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
    return count


@pytest.mark.parametrize("seed", range(4))
def test_component_labelling_matches_a_flood_fill(seed):
    mask = np.random.default_rng(seed).random((40, 60)) > 0.55
    labels = label_components(mask)
    assert labels.max() == bfs_components(mask)
    assert ((labels > 0) == mask).all()
    for label in range(1, labels.max() + 1):  # each label is one connected piece
        assert bfs_components(labels == label) == 1


def test_small_holes_are_filled_and_large_ones_kept():
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:55, 5:55] = True
    mask[10:13, 10:13] = False  # 9 px hole: filled
    mask[20:40, 20:40] = False  # 400 px hole: kept (not under 400)
    mask[50:55, 50:55] = False  # notch open to the outside: not a hole
    filled = fill_small_holes(mask, 400)
    assert filled[10:13, 10:13].all()
    assert not filled[20:40, 20:40].any()
    assert not filled[50:55, 50:55].any()
    assert filled.sum() == mask.sum() + 9


def test_clean_phrase():
    assert clean_phrase("ball, bird,, boat [SEP]") == "ball, bird, boat"
    assert clean_phrase("[SEP]") == ""


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1000, 200)])
def test_boxes_and_masks_come_back_in_original_pixels(pipeline, size):
    """The segmenter is asked for the box; a mask decoder that paints exactly its prompt box must give
    back the same rectangle in the original image, whatever the aspect ratio."""
    width, height = size
    picture = image(width, height)
    box = np.array([[0.2 * width, 0.3 * height, 0.6 * width, 0.8 * height]], dtype=np.float32)
    cfg = pipeline.segmenter_encoder.config

    class BoxPainter(torch.nn.Module):  # stands in for the decoder: paints the prompt box in the low-res frame
        def forward(self, embeddings, boxes):
            low = cfg.low_res_size
            scale = low / cfg.img_size
            out = torch.full((1, boxes.shape[1], low, low), -10.0)
            for i, (x0, y0, x1, y1) in enumerate(boxes[0].tolist()):
                out[0, i, round(y0 * scale) : round(y1 * scale), round(x0 * scale) : round(x1 * scale)] = 10.0
            return out, torch.ones(1, boxes.shape[1])

    decoder = pipeline.segmenter_decoder
    pipeline.segmenter_decoder = BoxPainter()
    try:
        mask = pipeline.segment(picture, box)[0]
    finally:
        pipeline.segmenter_decoder = decoder
    assert mask.shape == (height, width)
    rows, cols = np.nonzero(mask)
    x0, y0, x1, y1 = box[0]
    tolerance = 2 + max(width, height) / cfg.low_res_size  # one low-res cell
    assert abs(cols.min() - x0) <= tolerance and abs(cols.max() + 1 - x1) <= tolerance
    assert abs(rows.min() - y0) <= tolerance and abs(rows.max() + 1 - y1) <= tolerance


def test_detector_thresholds_are_the_papers_or_the_tuned_ones(pipeline):
    """The official preset uses the paper's thresholds; the trained default those its training tuned."""
    import json

    from bubogpt.grounding.pipeline import GROUNDING_PRESETS

    official = GROUNDING_PRESETS["official"]
    assert official.box_threshold == 0.25 and official.text_threshold == 0.2 and official.hole_area == 400
    tuned = json.loads((default_model_dir() / "grounding" / "train_report.json").read_text())["threshold_tuning"]
    assert (pipeline.config.box_threshold, pipeline.config.text_threshold) == (tuned["box_threshold"], tuned["text_threshold"])
    assert pipeline.config.hole_area > 0


def test_full_pipeline_on_the_default_model(pipeline):
    picture = image(320, 240, seed=0)
    result = pipeline(picture)
    assert result.tags, "the default tagger proposes tags"
    assert result.caption == ",".join(result.tags) + "."
    assert result.entities
    for entity in result.entities:
        x0, y0, x1, y1 = entity.box_xyxy
        assert 0 <= x0 <= x1 <= 320 and 0 <= y0 <= y1 <= 240
        assert entity.mask_array().shape == (240, 320)
        assert decode(entity.mask_rle()).sum() == entity.mask_area()
        assert entity.label and "[SEP]" not in entity.label
    # deterministic
    again = pipeline(picture)
    assert [e.label for e in again.entities] == [e.label for e in result.entities]
    assert all((a.mask_array() == b.mask_array()).all() for a, b in zip(again.entities, result.entities))


def test_detections_use_the_reference_detector_path(pipeline):
    picture = image(300, 200, seed=2)
    tags = pipeline.tags(picture)
    caption = ",".join(tags) + "."
    direct = gdino.ground(pipeline.detector, pipeline.tokenizer, picture, caption, 0.25, 0.2)
    via_pipeline = pipeline.detect(picture, caption)
    assert [d.box_xyxy for d in direct] == [d.box_xyxy for d in via_pipeline]


def test_save_and_load_round_trip(tmp_path, pipeline):
    save_grounding(pipeline, tmp_path)
    import shutil

    shutil.copytree(default_model_dir() / "grounding" / "text_encoder", tmp_path / "grounding" / "text_encoder")
    restored = load_grounding(tmp_path)
    for a, b in ((pipeline.tagger, restored.tagger), (pipeline.detector, restored.detector),
                 (pipeline.segmenter_encoder, restored.segmenter_encoder)):
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), key
    assert restored.tag_list == pipeline.tag_list
    assert torch.equal(restored.thresholds, pipeline.thresholds)


def test_bubo_ground_cli_prints_the_pipelines_entities_and_writes_an_overlay(tmp_path, pipeline, capsys):
    import json

    from bubo_cli.main import main

    path = tmp_path / "picture.png"
    image(200, 160, seed=4).save(path)
    overlay = tmp_path / "overlay.png"
    assert main(["ground", "--image", str(path), "--json", "--out", str(overlay)]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = pipeline(image(200, 160, seed=4))
    assert printed["tags"] == expected.tags
    assert [e["label"] for e in printed["entities"]] == [e.label for e in expected.entities]
    assert Image.open(overlay).size[0] == 200
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert main(["ground", "--image", str(bad)]) == 2  # a user error: one line on stderr, exit code 2
    assert "not a recognised image format" in capsys.readouterr().err
