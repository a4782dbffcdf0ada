"""The served default means what it says: held-out world images, sounds and pairs through `bubo serve`
(real Triton, vLLM and gRPC on loopback), scored against the generator's truth with training.eval.

The seeds are held out (derived from "served-meaning", never a training seed). The floors sit below
what the committed default scores (bubogpt/default_model/training_report.json and `bubo eval`), so a
serving change that garbles embeddings, prompts, tokens or masks fails here, not only a shape check.
"""

from __future__ import annotations

import numpy as np

from serving.client import chat_request, collect
from training import eval as world_eval
from training.prompts import AUDIO
from training.world import derive_seed
from training.world.scene import make_scene
from training.world.sound import SOUND_NAMES, SOURCE_SOUNDS, make_sound

IMAGES = 16
# floors (the committed default scores higher; see the module docstring)
MIN_KIND_RECALL = 0.55  # served: 0.69
MIN_KIND_PRECISION = 0.7  # served: 0.84
MIN_GROUNDING_F1 = 0.25  # served: 0.36 (entities are those the answer names, scored against every object)
MIN_MASK_IOU = 0.7  # served: 0.81
MIN_AUDIO_KIND = 0.8  # held-out eval: 0.97
MIN_PAIR_AUDIO_KIND = 0.75


def ask(stub, text, image=b"", audio=b"", ground=False):
    return collect(stub.Chat(chat_request(text, image=image, audio=audio, ground=ground, max_new_tokens=96), timeout=300))


def entities_as_dicts(result):
    from bubogpt.grounding import rle

    return [{"label": e.label, "box_xyxy": [e.box.x0, e.box.y0, e.box.x1, e.box.y1],
             "mask": rle.decode({"size": [e.mask.height, e.mask.width], "counts": e.mask.counts})} for e in result.entities]


def test_answers_name_the_objects_and_the_masks_cover_them(stub):
    precision, recall, tp, fp, fn, mask_ious = [], [], 0, 0, 0, []
    for i in range(IMAGES):
        scene = make_scene(derive_seed("served-meaning", "image", i))
        result = ask(stub, "What objects are in the image?", image=scene.jpeg(), ground=True)
        score = world_eval.score_text(result.text, scene)
        precision.append(score.kind_precision)
        recall.append(score.kind_recall)
        grounding = world_eval.score_grounding(entities_as_dicts(result), scene)
        tp, fp, fn = tp + grounding.tp, fp + grounding.fp, fn + grounding.fn
        mask_ious += grounding.mask_ious
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    summary = f"kind precision {np.mean(precision):.2f} recall {np.mean(recall):.2f} grounding F1 {f1:.2f} mask IoU {np.mean(mask_ious or [0]):.2f}"
    assert np.mean(recall) >= MIN_KIND_RECALL, summary
    assert np.mean(precision) >= MIN_KIND_PRECISION, summary
    assert f1 >= MIN_GROUNDING_F1, summary
    assert np.mean(mask_ious) >= MIN_MASK_IOU, summary


def test_sounds_are_recognised(stub):
    correct = []
    for i, kind in enumerate(SOUND_NAMES * 2):
        sound = make_sound(derive_seed("served-meaning", "sound", i), kind)
        result = ask(stub, AUDIO[0], audio=sound.wav())
        correct.append(world_eval.score_audio(result.text, sound).kind_correct)
    assert np.mean(correct) >= MIN_AUDIO_KIND, f"sound kind accuracy {np.mean(correct):.2f}"


def test_pair_answers_name_the_sound(stub):
    """Image + audio, related or not: the audio half of the answer names the sound.

    (Whether the pair is related is not asserted: the committed default answers "They seem unrelated"
    to this question whatever the pair, see training_report.json and the issue notes.)"""
    correct = []
    for i in range(12):
        seed = derive_seed("served-meaning", "pair", i)
        if i % 2 == 0:
            kind = SOURCE_SOUNDS[i // 2 % len(SOURCE_SOUNDS)]
            sound, scene = make_sound(seed, kind), make_scene(seed + 1, require=[kind], unique=[kind])
        else:
            sound = make_sound(seed, SOUND_NAMES[i % len(SOUND_NAMES)])
            scene = make_scene(seed + 1, exclude=[sound.source] if sound.source else [])
        result = ask(stub, "Are the audio and image related to each other? What are they?", image=scene.jpeg(), audio=sound.wav())
        _, audio_part = world_eval.split_pair_answer(result.text)
        correct.append(world_eval.score_audio(audio_part, sound).kind_correct)
    assert np.mean(correct) >= MIN_PAIR_AUDIO_KIND, f"pair audio kind accuracy {np.mean(correct):.2f}"
