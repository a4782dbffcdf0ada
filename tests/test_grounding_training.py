"""Training of the tiny grounding nets (training/grounding/) on a tiny world corpus: fast checks only."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bubogpt.grounding.pipeline import build_random_grounding, load_grounding
from training import grounding as G
from training.world.datasets import read_grounding, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_corpus(root, seed=3, images=20)
    return root


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fresh(tmp_path: Path, seed: int = 0):
    G.seed_everything(seed)
    return build_random_grounding("tiny", tmp_path / "grounding")


@pytest.fixture(scope="module")
def samples(corpus, tmp_path_factory, threads):
    return G.load_samples(corpus, fresh(tmp_path_factory.mktemp("p")), progress=False)


def test_hungarian_matcher_hand_cases():
    rows, cols = G.hungarian_match(np.array([[5.0, 1.0], [1.0, 5.0], [9.0, 9.0]]))
    assert cols.tolist() == [0, 1] and rows.tolist() == [1, 0]
    # more queries than targets: the cheapest query per target, no query twice
    rows, cols = G.hungarian_match(torch.tensor([[0.9], [0.1], [0.5]]))
    assert rows.tolist() == [1] and cols.tolist() == [0]
    rows, cols = G.hungarian_match(np.zeros((4, 0)))
    assert len(rows) == len(cols) == 0


def test_match_queries_prefers_the_right_box_and_token():
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]]])
    logits = torch.full((1, 3, 8), -5.0)
    logits[0, 1, 3] = 4.0  # query 1 says token 3
    target = G.DetTarget(boxes=torch.tensor([[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]), tokens=torch.zeros(2, 8))
    target.tokens[0, 3] = 1
    target.tokens[1, 5] = 1
    [(rows, cols)] = G.match_queries(logits, boxes, [target])
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 1, 1: 0}


def test_generalized_box_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    g = G.generalized_box_iou(a, b)[0]
    assert g[0] == pytest.approx(1.0)
    assert g[1] == pytest.approx(1 / 7 - (9 - 7) / 9)
    assert g[2] == pytest.approx(0 - (12 - 8) / 12)


def test_calibrated_thresholds_separate_the_classes():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.1], [0.2, 0.1], [0.7, 0.3], [0.1, 0.1]])
    targets = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0], [1, 0], [0, 0]], dtype=torch.float32)
    t = G.calibrate_thresholds(probs, targets, default=0.5, min_positives=2)
    assert 0.3 <= float(t[0]) < 0.7
    assert float(t[1]) == 0.5  # no positives: the default


def test_samples_match_the_pipeline_preprocessing(samples, corpus, tmp_path):
    from bubogpt.grounding import grounding_dino as gdino
    from bubogpt.grounding import ram, sam

    data, scene = next(iter(read_grounding(corpus)))
    import io

    image = Image.open(io.BytesIO(data)).convert("RGB")
    s = samples[0]
    p = fresh(tmp_path)
    assert torch.equal(G.tagger_batch([s], p.tagger.config, None)[0], ram.preprocess_image(image, p.tagger.config))
    dpix, _ = gdino.preprocess_image(image, p.detector.config)
    assert torch.allclose(G.normalise(s.det_pixels[None], p.detector.config.pixel_mean, p.detector.config.pixel_std), dpix, atol=1e-6)
    spix, hw = sam.preprocess_image(np.asarray(image), p.segmenter_encoder.config)
    assert hw == s.sam_hw
    assert torch.allclose(G.sam_normalise([s], p.segmenter_encoder.config)[0], torch.from_numpy(spix), atol=1e-5)
    assert len(s.kinds) == len(scene.objects) and s.tags == scene.tags


def test_training_forward_equals_the_exported_forward(samples, tmp_path, threads):
    p = fresh(tmp_path)
    shape = samples[0].det_pixels.shape
    batch = [s for s in samples if s.det_pixels.shape == shape][:2]
    pixels, text, _ = G.detector_batch(batch, p.detector, p.tokenizer, p.tag_list, None)
    with torch.no_grad():
        logits, boxes = p.detector(pixels, *text)
        out = p.detector.forward_with_aux(pixels, *text)
    assert torch.equal(out["pred_logits"], logits) and torch.equal(out["pred_boxes"], boxes)
    assert len(out["aux"]) == p.detector.config.num_decoder_layers - 1
    assert out["enc"]["pred_logits"].shape == logits.shape and out["enc"]["pred_boxes"].shape == boxes.shape


def test_detector_targets_point_at_the_objects_tokens(samples, tmp_path):
    p = fresh(tmp_path)
    s = next(s for s in samples if s.kinds)
    _, text, [target] = G.detector_batch([s], p.detector, p.tokenizer, p.tag_list, None)
    assert len(target.boxes) == len(s.kinds)
    ids = text.input_ids[0]
    for kind, tokens in zip(s.kinds, target.tokens):
        assert p.tokenizer.convert_ids_to_tokens([int(ids[tokens[: len(ids)].bool()][0])]) == [kind]
    assert ((target.boxes > 0) & (target.boxes <= 1)).all()


def _repeat_loss(fn, steps=6):
    return [fn() for _ in range(steps)]


def test_a_few_steps_reduce_each_loss(samples, tmp_path, threads):
    """Overfit one fixed batch per net for a few steps: the loss must fall."""
    p = fresh(tmp_path)
    rng = None
    # tagger
    batch = samples[:8]
    x = G.tagger_batch(batch, p.tagger.config, rng)
    y = G.tag_targets(batch, p.tag_list)
    opt = torch.optim.AdamW(p.tagger.parameters(), lr=2e-3)
    p.tagger.train()

    def tag_step():
        loss = G.tagger_loss(p.tagger, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    losses = _repeat_loss(tag_step)
    assert losses[-1] < losses[0]
    # segmenter
    enc, dec = p.segmenter_encoder, p.segmenter_decoder
    with_objects = [s for s in samples if s.kinds][:2]
    pixels, owners, boxes, targets = G.segmenter_batch(with_objects, enc.config, None)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(dec.parameters()), lr=2e-3)

    def seg_step():
        loss, _ = G.segmenter_loss(G.segmenter_logits(enc, dec, pixels, owners, boxes), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    losses = _repeat_loss(seg_step)
    assert losses[-1] < losses[0]
    # detector
    shape = with_objects[0].det_pixels.shape
    batch = [s for s in samples if s.det_pixels.shape == shape and s.kinds][:2]
    dpix, text, dtargets = G.detector_batch(batch, p.detector, p.tokenizer, p.tag_list, None)
    opt = torch.optim.AdamW(p.detector.parameters(), lr=1e-3)
    p.detector.train()

    def det_step():
        loss, _ = G.detector_step_loss(p.detector, dpix, text, dtargets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    losses = _repeat_loss(det_step)
    assert losses[-1] < losses[0]


STEPS = {"tagger": 2, "segmenter": 2, "detector": 2}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory, threads):
    out = tmp_path_factory.mktemp("model")
    report = G.train_grounding(corpus, out, seed=7, budget_minutes=1, progress=False, steps=STEPS)
    return out, report


def test_train_grounding_is_deterministic_and_saves_a_loadable_pipeline(trained, corpus, tmp_path, threads):
    out, report = trained
    assert set(report["seconds"]) >= {"tagger", "segmenter", "detector"}
    assert all(report[name]["steps"] == 2 for name in STEPS)
    assert len(report["thresholds"]) == 24
    again = G.train_grounding(corpus, tmp_path, seed=7, budget_minutes=1, progress=False, steps=STEPS)
    assert again["thresholds"] == report["thresholds"]
    a, b = load_grounding(out), load_grounding(tmp_path)
    for ma, mb in ((a.tagger, b.tagger), (a.detector, b.detector), (a.segmenter_encoder, b.segmenter_encoder),
                   (a.segmenter_decoder, b.segmenter_decoder)):
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.thresholds, b.thresholds)
    # the loaded pipeline runs end to end, and the evaluation scores it
    data, _ = next(iter(read_grounding(corpus)))
    import io

    result = a(Image.open(io.BytesIO(data)).convert("RGB"))
    assert isinstance(result.tags, list)
    metrics = G.evaluate_grounding(a, corpus, limit=3)
    assert metrics["images"] == 3
    assert {"tags", "objects", "objects_and_regions", "oracle_detector", "oracle_segmenter"} <= metrics.keys()
    assert 0.0 <= metrics["tags"]["f1"] <= 1.0


def test_a_different_seed_gives_other_weights(trained, corpus, tmp_path, threads):
    out, _ = trained
    G.train_grounding(corpus, tmp_path, seed=8, budget_minutes=1, progress=False, steps={"tagger": 1, "segmenter": 1, "detector": 1})
    a, b = load_grounding(out), load_grounding(tmp_path)
    assert not torch.equal(a.detector.bbox_embed.layers[0].weight, b.detector.bbox_embed.layers[0].weight)


def test_plan_scales_with_the_budget():
    small, large = G.plan_steps(10), G.plan_steps(30)
    assert all(large[k] >= 2.9 * small[k] for k in small)


def test_threshold_tuning_picks_from_the_grid_and_is_saved(trained, corpus, threads):
    out, report = trained
    tuning = report["threshold_tuning"]
    assert tuning["box_threshold"] in G.BOX_THRESHOLDS + (0.25,) and tuning["text_threshold"] in G.TEXT_THRESHOLDS + (0.2,)
    assert report["config"]["box_threshold"] == tuning["box_threshold"]
    assert report["config"]["text_threshold"] == tuning["text_threshold"]
    assert load_grounding(out).config.box_threshold == tuning["box_threshold"]
    # on the pipeline it tunes: the chosen pair is at least as good as the pipeline's own pair
    pipe = load_grounding(out)
    items = G.load_images(corpus, [0, 2, 5])
    assert [scene.tags for _, scene in items] == [s.tags for i, (_, s) in enumerate(read_grounding(corpus)) if i in (0, 2, 5)]
    result = G.tune_detection_thresholds(pipe, items, box_thresholds=(0.3, 0.5), text_thresholds=(0.3,))
    assert result["objects"]["f1"] >= result["default"]["f1"]
    assert (pipe.config.box_threshold, pipe.config.text_threshold) == (result["box_threshold"], result["text_threshold"])
