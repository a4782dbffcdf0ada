"""The synthetic world (training.world) and its metrics (training.eval): determinism, exact masks and
boxes, occlusion, language true to the truth, every corpus file readable by the training readers,
metric values on hand-made cases."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from bubogpt.grounding import rle as rle_codec
from bubogpt.grounding.ram import TINY_TAG_LIST
from bubogpt.grounding.schema import GroundedEntity
from training import eval as E
from training.config import load_config
from training.datasets import READERS, CaptionShards
from training.world import language as L
from training.world.datasets import CorpusSizes, make_item, read_grounding, write_corpus
from training.world.scene import COLORS, MIN_VISIBLE, OBJECT_KINDS, Scene, SceneObject, make_scene, tight_box
from training.world.sound import SAMPLE_RATE, SOUND_KINDS, SOUND_NAMES, SOURCE_SOUNDS, make_sound

SEEDS = range(24)


# --------------------------------------------------------------------------------------------------
# Scenes and sounds
# --------------------------------------------------------------------------------------------------


def test_world_names_are_tags_of_the_tiny_tagger():
    scene_tags = set(OBJECT_KINDS) | {"sky", "grass", "water", "road"}
    assert scene_tags <= set(TINY_TAG_LIST)
    assert {k.source for k in SOUND_KINDS.values() if k.source} <= set(OBJECT_KINDS)
    assert len(OBJECT_KINDS) == 8 and len(COLORS) == 8


def test_scene_is_deterministic():
    a, b = make_scene(7), make_scene(7)
    assert a.png() == b.png() and a.jpeg() == b.jpeg()
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    assert make_scene(8).png() != a.png()
    assert 224 <= a.width <= 320 and 224 <= a.height <= 320


def test_sound_is_deterministic_and_well_formed():
    assert make_sound(3).wav() == make_sound(3).wav()
    assert make_sound(3).wav() != make_sound(4).wav()
    for i, kind in enumerate(SOUND_NAMES):
        sound = make_sound(100 + i, kind)
        data, rate = sf.read(io.BytesIO(sound.wav()))
        assert rate == SAMPLE_RATE == 16000 and 2.0 <= len(data) / rate <= 8.0
        assert np.abs(sound.samples).max() <= 1.0 and np.isfinite(sound.samples).all()
        assert sound.source == SOUND_KINDS[kind].source
        if sound.count is None:
            assert kind == "wind"
        else:
            assert len(sound.events) == sound.count
            assert all(0 <= s < e <= sound.duration + 1e-9 for s, e in sound.events)
    assert make_sound(1, "dog", count=3).count == 3
    with pytest.raises(ValueError):
        make_sound(1, "unicorn")


def test_masks_are_exact_and_inside_boxes():
    unoccluded = 0
    for seed in SEEDS:
        scene = make_scene(seed)
        assert set(scene.tags) <= set(TINY_TAG_LIST)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= scene.width and 0 <= y0 < y1 <= scene.height
            assert obj.mask.shape == (scene.height, scene.width) and obj.mask.dtype == bool
            inside = np.zeros_like(obj.mask)
            inside[y0:y1, x0:x1] = True
            assert not (obj.mask & ~inside).any(), "visible mask leaves the box"
            assert tight_box(obj.full_mask) == obj.box  # box = tight box of the whole object
            assert obj.area == obj.full_mask.sum() and obj.visible_fraction >= MIN_VISIBLE
            vx, vy, vw, vh = rle_codec.to_bbox(rle_codec.encode(obj.mask))  # the visible box as COCO tools see it
            assert obj.visible_box == (vx, vy, vx + vw, vy + vh)
            if obj.visible_area == obj.area:
                unoccluded += 1
                assert obj.visible_box == obj.box and not obj.occluded_by
        for region in scene.regions:
            assert region.label in TINY_TAG_LIST and region.mask.any()
    assert unoccluded > 10


def test_occlusion_is_respected():
    occluded = 0
    for seed in SEEDS:
        scene = make_scene(seed)
        objs = scene.objects
        later = np.zeros((scene.height, scene.width), bool)
        for i in range(len(objs) - 1, -1, -1):
            # visible = whole object minus everything drawn after it
            assert np.array_equal(objs[i].mask, objs[i].full_mask & ~later)
            later |= objs[i].full_mask
            for j in range(i + 1, len(objs)):
                assert not (objs[i].mask & objs[j].mask).any()
                if j in objs[i].occluded_by:
                    assert (objs[i].full_mask & objs[j].full_mask).any()
            occluded += objs[i].visible_area < objs[i].area
        for region in scene.regions:
            assert not (region.mask & later).any()
        # the pixels of the front-most object are its own: its colour dominates its visible mask
        front = objs[-1]
        rgb = scene.pixels[front.mask].astype(float)
        ref = np.asarray(COLORS[front.color], float)
        assert (np.abs(rgb - ref).max(axis=1) <= 14).mean() > 0.4
    assert occluded >= 3


def test_scene_constraints():
    for seed in range(8):
        kind = SOURCE_SOUNDS[seed % len(SOURCE_SOUNDS)]
        scene = make_scene(seed, require=[kind], unique=[kind], n_objects=5)
        assert scene.count(kind) == 1
        scene = make_scene(seed, exclude=[kind])
        assert scene.count(kind) == 0
    scene = make_scene(3, n_objects=1, background="sky_water", size=(256, 224))
    assert len(scene.objects) == 1 and scene.background == "sky_water" and (scene.width, scene.height) == (256, 224)
    assert {r.label for r in scene.regions} <= {"sky", "water"}
    with pytest.raises(ValueError):
        make_scene(1, require=["unicorn"])
    # truth survives its JSON form
    back = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
    assert np.array_equal(back.objects[0].mask, scene.objects[0].mask) and back.objects[0].box == scene.objects[0].box


def test_language_is_true_to_the_scene():
    """Everything the grammar says scores perfectly against its own truth (and parses back)."""
    for seed in range(30):
        scene, rng = make_scene(seed + 500), random.Random(seed)
        for text in (L.caption(scene, rng), L.description(scene, rng)):
            assert E.score_text(text, scene).complete, text
        for qa in L.questions(scene, rng, 5):
            assert E.score_answer(qa.answer, qa.type, qa.facts), qa
        sound = make_sound(seed)
        for text in (L.audio_caption(sound, rng), L.audio_description(sound, rng)):
            score = E.score_audio(text, sound)
            assert score.kind_correct and score.count_correct is not False, text
        kind = SOURCE_SOUNDS[seed % len(SOURCE_SOUNDS)]
        sound, pair = make_sound(seed, kind), make_scene(seed, require=[kind], unique=[kind])
        answer = L.pair_answer(pair, sound, rng)
        assert E.classify_relation(answer) == "related"
        assert E.score_source_answer(answer, L.source_object(pair, sound), pair.width, pair.height).correct
        other = make_scene(seed + 1, exclude=[kind])
        answer = L.pair_answer(other, sound, rng)
        assert answer.startswith("They seem unrelated. The image shows ") and E.classify_relation(answer) == "unrelated"
    with pytest.raises(ValueError):
        L.unrelated_answer(pair, make_sound(1, kind), rng)


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    manifest = write_corpus(root, seed=0, images=20)
    return root, manifest


def _reader(name: str, spec: dict):
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "caption_shards":
        return CaptionShards(name, spec["shards"], modality=spec["modality"])
    return READERS[kind](name, spec.pop("annotations"), **spec)


def test_every_dataset_reads_back(corpus):
    root, manifest = corpus
    sizes = CorpusSizes(**manifest["sizes"])
    expected = {"images": sizes.captions, "wavcaps": sizes.audio_captions, "cc_sbu_align": sizes.aligned, "clotho": sizes.clotho,
                "vggss": sizes.vggss, "negatives": sizes.negatives}
    for name, spec in manifest["datasets"].items():
        samples = list(_reader(name, spec))  # strict readers: any bad record raises
        if name == "llava":
            records = json.loads((root / "llava/llava_instruct.json").read_text())
            assert len(samples) == sum(len(r["conversations"]) // 2 for r in records) and len(records) == sizes.llava
            assert all(s.instruction and "<image>" not in s.instruction for s in samples)
        else:
            assert len(samples) == expected[name], name
        for sample in samples[:3]:
            if sample.image is not None:
                data = sample.image if isinstance(sample.image, bytes) else Path(sample.image).read_bytes()
                assert Image.open(io.BytesIO(data)).format == "JPEG"
            if sample.audio is not None:
                data, rate = sf.read(str(sample.audio))
                assert rate == 16000 and 2.0 <= len(data) / rate <= 8.0
    negatives = list(_reader("negatives", manifest["datasets"]["negatives"]))
    assert all(s.answer.startswith("They seem unrelated.") for s in negatives)
    assert all("comes from" in s.answer for s in _reader("vggss", manifest["datasets"]["vggss"]))
    for stage in ("stage1", "stage2"):
        cfg = load_config(manifest["configs"][stage])
        assert cfg.stage == stage and cfg.data.datasets


def test_grounding_text_and_eval_files(corpus):
    root, manifest = corpus
    entries = list(read_grounding(root))
    assert len(entries) == manifest["images"]
    for image, scene in entries[:6]:
        decoded = Image.open(io.BytesIO(image))
        assert decoded.size == (scene.width, scene.height)
        assert all(o.mask.shape == (scene.height, scene.width) and o.mask.any() for o in scene.objects)
    texts = [json.loads(line) for line in (root / "text/corpus.jsonl").read_text().splitlines()]
    assert len(texts) == manifest["texts"] and {"caption", "description", "dialogue", "audio_description", "pair"} <= {t["type"] for t in texts}
    items = [json.loads(line) for line in (root / "eval/items.jsonl").read_text().splitlines()]
    assert len(items) == manifest["eval_items"]
    metrics = E.evaluate(items, E.reference_predictions(items))
    summary = metrics.summary()
    assert summary["missing"] == 0.0
    assert all(value == 1.0 for name, value in summary.items() if name not in ("missing", "grounding.images", "negative.invented_link")), summary
    assert summary["negative.invented_link"] == 0.0  # a rate of wrong answers: the references invent no link
    assert {"qa.accuracy", "relation.accuracy", "source.localisation", "grounding.mask_iou", "audio.kind_accuracy"} <= set(summary)
    # a model that always says "unrelated" gets the negatives right and the related pairs wrong
    pairs = [i for i in items if i["task"] in ("source", "negative")]
    lazy = {i["id"]: {"answer": "They seem unrelated."} for i in pairs}
    share = sum(i["task"] == "negative" for i in pairs) / len(pairs)
    assert E.evaluate(pairs, lazy).summary()["relation.accuracy"] == pytest.approx(share)


def _digests(root: Path) -> dict[str, str]:
    skip = {"world.json", "configs/stage1_world.toml", "configs/stage2_world.toml"}  # these name the output folder
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and str(p.relative_to(root)) not in skip}


def test_corpus_is_deterministic_and_seeds_are_disjoint(tmp_path):
    write_corpus(tmp_path / "a", seed=5, images=6)
    write_corpus(tmp_path / "b", seed=5, images=6)
    write_corpus(tmp_path / "c", seed=6, images=6)
    a, b, c = (_digests(tmp_path / n) for n in "abc")
    assert a == b
    media = lambda d: {v for k, v in d.items() if k.endswith((".jpg", ".wav", ".flac"))}  # noqa: E731
    assert media(a) and not media(a) & media(c)  # a held-out seed shares no picture or sound
    assert make_item(5, "vggss", 0).record == make_item(5, "vggss", 0).record


def test_corpus_sizes():
    sizes = CorpusSizes.from_images(2000)
    assert sizes.images == 2000 and sizes.sounds == 1600 and sizes.captions == 800
    with pytest.raises(ValueError):
        CorpusSizes.from_images(3)


# --------------------------------------------------------------------------------------------------
# Metrics on hand-made cases
# --------------------------------------------------------------------------------------------------


def _hand_scene() -> Scene:
    h, w = 30, 40
    ball = np.zeros((h, w), bool)
    ball[0:10, 0:10] = True
    dog = np.zeros((h, w), bool)
    dog[10:20, 20:40] = True
    dog2 = np.zeros((h, w), bool)
    dog2[22:30, 0:8] = True
    objects = [
        SceneObject("ball", "red", "small", (0, 0, 10, 10), ball, 100),
        SceneObject("dog", "blue", "large", (20, 10, 40, 20), dog, 200),
        SceneObject("dog", "white", "small", (0, 22, 8, 30), dog2, 64),
    ]
    return Scene(seed=0, width=w, height=h, background="gradient", objects=objects, regions=[])


def test_text_metrics_catch_wrong_colors_counts_and_objects():
    scene = _hand_scene()
    perfect = E.score_text("A red ball, a blue dog and a white dog. The two dogs are blue and white.", scene)
    assert perfect.complete and perfect.kind_precision == perfect.kind_recall == perfect.color_accuracy == perfect.count_accuracy == 1.0
    wrong_color = E.score_text("A green ball and two dogs.", scene)
    assert wrong_color.color_errors == ["green ball"] and not wrong_color.correct and wrong_color.count_accuracy == 1.0
    wrong_count = E.score_text("Three dogs and a red ball.", scene)
    assert wrong_count.count_errors and wrong_count.color_accuracy == 1.0 and not wrong_count.correct
    invented = E.score_text("A red ball and a cat.", scene)
    assert invented.hallucinated == ["cat"] and invented.missed == ["dog"]
    assert invented.kind_precision == 0.5 and invented.kind_recall == 0.5
    assert E.score_text("There are no dogs.", scene).count_errors
    assert E.score_text("There are no cats.", scene).correct


def test_answer_metrics():
    assert E.score_answer("There are two dogs: a blue dog and a white dog.", "count", {"kind": "dog", "count": 2})
    assert not E.score_answer("There are three dogs.", "count", {"kind": "dog", "count": 2})
    assert E.score_answer("There are no cats in the image.", "count", {"kind": "cat", "count": 0})
    assert E.score_answer("The dogs are blue and white.", "color", {"kind": "dog", "colors": ["blue", "white"]})
    assert not E.score_answer("The dogs are blue.", "color", {"kind": "dog", "colors": ["blue", "white"]})
    assert E.score_answer("The red ball is in the top left.", "where", {"kind": "ball", "color": "red", "position": ["left", "top"]})
    assert not E.score_answer("The red ball is on the right.", "where", {"kind": "ball", "color": "red", "position": ["left", "top"]})
    assert E.parse_position("it is in the center") == ("center", "middle") and E.parse_position("at the bottom") == ("center", "bottom")
    assert E.score_answer("No, there is no cat in the image.", "exists", {"kind": "cat", "present": False})
    assert not E.score_answer("Yes, there is a cat.", "exists", {"kind": "cat", "present": False})
    assert E.score_answer("There are a red ball and two dogs.", "what", {"kinds": {"ball": 1, "dog": 2}})
    assert not E.score_answer("There is a red ball.", "what", {"kinds": {"ball": 1, "dog": 2}})


def test_audio_and_relation_metrics():
    sound = make_sound(1, "dog", count=3)
    assert E.score_audio("A dog barks three times.", sound).kind_correct and E.score_audio("A dog barks three times.", sound).count_correct
    assert E.score_audio("A dog barks twice.", sound).count_correct is False
    assert not E.score_audio("A bell rings three times.", sound).kind_correct
    assert E.score_audio("A boat blows its horn once.", {"kind": "boat", "count": 1}).kind_correct
    assert E.classify_relation("They seem unrelated. The image shows a cat.") == "unrelated"
    assert E.classify_relation("The sound comes from the blue dog on the right.") == "related"
    assert E.classify_relation("A dog.") is None
    assert E.relation_accuracy([("They seem unrelated.", False), ("The sound comes from the dog.", True),
                                ("The sound comes from the cat.", False), ("Nothing.", True)]) == 0.5
    scene = _hand_scene()
    source = scene.objects[1]
    score = E.score_source_answer("The sound comes from the blue dog on the right. The dog barks.", source, scene.width, scene.height)
    assert source.position(scene.width, scene.height) == ("right", "middle") and score.correct
    assert not E.score_source_answer("The sound comes from the white dog on the right.", source, scene.width, scene.height).correct
    assert not E.score_source_answer("The sound comes from the red ball.", source, scene.width, scene.height).kind


def test_iou_values_and_greedy_matching():
    assert E.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert E.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and E.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    a = np.zeros((4, 4), bool)
    a[:2, :] = True  # 8 pixels
    b = np.zeros((4, 4), bool)
    b[1:3, :2] = True  # 4 pixels, 2 shared
    assert E.mask_iou(a, b) == pytest.approx(2 / 10)
    assert E.mask_iou(rle_codec.encode(a), b) == pytest.approx(2 / 10)
    assert E.mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0
    # greedy takes the best pair first (0.9), which leaves row 1 with nothing above the threshold
    assert E.greedy_match(np.array([[0.9, 0.8], [0.85, 0.1]]), 0.5) == [(0, 0, 0.9)]
    assert E.greedy_match(np.array([[0.9, 0.2], [0.3, 0.6]]), 0.5) == [(0, 0, 0.9), (1, 1, 0.6)]
    assert E.greedy_match(np.zeros((0, 3))) == []


def test_grounding_and_localisation_metrics():
    scene = _hand_scene()
    perfect = [{"label": o.kind, "box_xyxy": o.box, "mask": o.mask} for o in scene.objects]
    score = E.score_grounding(perfect, scene)
    assert (score.tp, score.fp, score.fn) == (3, 0, 0) and score.f1 == 1.0 and score.mean_box_iou == score.mean_mask_iou == 1.0
    shifted_mask = np.zeros_like(scene.objects[0].mask)
    shifted_mask[0:10, 5:15] = True
    entities = [
        GroundedEntity(0, "red ball", 0.9, (5, 0, 15, 10), shifted_mask),  # IoU 1/3 < 0.5: a miss
        GroundedEntity(1, "dogs", 0.8, (20, 10, 40, 20), scene.objects[1].mask),
        GroundedEntity(2, "cat", 0.7, (0, 22, 8, 30)),  # right box, wrong label
    ]
    score = E.score_grounding(entities, scene)
    assert (score.tp, score.fp, score.fn) == (1, 2, 2) and score.precision == pytest.approx(1 / 3)
    loose = E.score_grounding(entities, scene, iou_threshold=0.3, match_labels=False)
    assert loose.tp == 3 and loose.box_ious == pytest.approx([1.0, 1.0, 1 / 3]) and loose.mean_mask_iou == pytest.approx((1 + 1 / 3) / 2)
    source = scene.objects[1]
    assert E.localisation_hit(entities, source)
    assert not E.localisation_hit([{"label": "dog", "box_xyxy": (0, 22, 8, 30)}], source)  # the other dog
    assert not E.localisation_hit([{"label": "ball", "box_xyxy": source.box}], source)  # wrong kind
    small = [{"label": "dog", "box_xyxy": (28, 14, 33, 17)}]  # centre on the dog, IoU 0.075
    assert E.localisation_hit(small, source, mode="point") and not E.localisation_hit(small, source)


def test_table_prints_metrics(capsys):
    metrics = E.Metrics()
    metrics.add("qa.accuracy", True)
    metrics.add("qa.accuracy", False)
    metrics.add("relation.accuracy", 1.0)
    text = E.print_table(metrics, title="hand-made")
    assert "qa.accuracy" in text and "0.500" in text and "1.000" in text and "hand-made" in text
    assert "qa.accuracy" in capsys.readouterr().out
