"""`bubo train nano` pieces: sketches, the world tokenizer, the LLM's example layout (= the served
layout), the encoders' slot targets, and the whole recipe at --quick size producing a loadable model."""

from __future__ import annotations

import json

import pytest
import torch

from bubogpt.prompt import SYSTEM_TEXT, Turn, build_prompt, layout_prompt
from bubogpt.tokenizer import build_tokenizer
from training.nano import encoders, language
from training.nano.sketch import PAD, VOCABULARY, audio_sketch, image_sketch, word_ids
from training.world.scene import OBJECT_KINDS, make_scene
from training.world.sound import make_sound


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(1024, language.tokenizer_corpus(0, 30))


def test_every_sketch_word_is_one_token(tokenizer):
    ids = word_ids(tokenizer, list(VOCABULARY) + [PAD])
    assert len(set(ids)) == len(VOCABULARY) + 1
    for word, token_id in zip(VOCABULARY, ids):
        assert tokenizer.decode([token_id]).strip() == word


def test_image_sketch_answers_for_each_kind_in_a_fixed_place():
    scene = make_scene(7, n_objects=4, require=["dog", "dog", "ball"])
    sketch = image_sketch(scene)
    assert len(sketch) == 32
    for k, kind in enumerate(OBJECT_KINDS):
        group = sketch[4 * k : 4 * k + 4]
        members = sorted((o for o in scene.objects if o.kind == kind), key=lambda o: o.box[0] + o.box[2])
        if not members:
            assert group == [PAD] * 4
            continue
        horizontal, vertical = scene.position(members[0])
        assert group[0] == kind and group[2] == members[0].color and group[3] == vertical + horizontal
    dogs = sketch[4 * OBJECT_KINDS.index("dog") : 4 * OBJECT_KINDS.index("dog") + 4]
    assert dogs[1] == {2: "two", 3: "three"}[scene.count("dog")]


def test_audio_sketch():
    sound = make_sound(3, "dog", count=3)
    assert audio_sketch(sound)[:4] == ["dog", "three", sound.loudness, sound.background]
    wind = make_sound(4, "wind")
    assert audio_sketch(wind)[1] == "none" and audio_sketch(wind)[5:] == [PAD] * 27


def test_dialogue_example_is_the_served_layout_with_the_sketch_in_the_slot(tokenizer):
    """Token for token, the LLM learns on the layout the server builds (bubogpt.prompt.layout_prompt)."""
    builder = language.ExampleBuilder(tokenizer)
    scene, sound = make_scene(11), make_sound(12, "bell")
    sketches = [("image", image_sketch(scene)), ("audio", audio_sketch(sound))]
    qas = [("What is in the image?", "There is a cat."), ("What color is the cat?", "The cat is red.")]
    example = builder.dialogue(sketches, qas, "qa")
    turns = [Turn("user", qas[0][0]), Turn("assistant", qas[0][1]), Turn("user", qas[1][0])]
    served = layout_prompt(tokenizer, build_prompt(turns, ["image", "audio"], system=SYSTEM_TEXT), 32)
    ids = list(served.token_ids)
    for (start, length), (_, words) in zip(served.slots, sketches):
        ids[start : start + length] = word_ids(tokenizer, words)
    answer = tokenizer("The cat is red.###", add_special_tokens=False)["input_ids"]
    assert example.token_ids == ids + answer
    assert example.labels == [language.IGNORE_INDEX] * len(ids) + answer


def test_examples_are_a_pure_function_of_seed_and_index(tokenizer):
    builder = language.ExampleBuilder(tokenizer)
    a = [language.make_example(builder, 5, i) for i in range(6)]
    b = [language.make_example(builder, 5, i) for i in range(6)]
    assert [e.token_ids for e in a] == [e.token_ids for e in b]
    assert [e.token_ids for e in a] != [language.make_example(builder, 6, i).token_ids for i in range(6)]


def test_llm_pretraining_lowers_held_out_loss(tokenizer):
    from bubogpt.config import get_preset
    from bubogpt.llm import build_llm

    builder = language.ExampleBuilder(tokenizer)
    train, held = language.examples(builder, 0, 64), language.examples(builder, 1, 8)
    torch.manual_seed(0)
    llm = build_llm(get_preset("nano").llm)
    before = language.evaluate_llm(llm, held, builder.pad_id)["held_out_loss"]
    after = language.pretrain_llm(llm, train, held, steps=30, batch_size=8, lr=3e-3, pad_id=builder.pad_id, progress=False)
    assert after["held_out_loss"] < before - 1.0


def test_patch_labels_follow_the_masks():
    scene = make_scene(21, n_objects=1)
    obj = scene.objects[0]
    labels = encoders.patch_labels(scene, 16)
    kinds = labels[:, 0].reshape(16, 16)
    assert set(kinds.unique().tolist()) <= {0, encoders.DENSE_KINDS.index(obj.kind)}
    covered = torch.nn.functional.interpolate(torch.from_numpy(obj.mask).float()[None, None], size=(16, 16), mode="area")[0, 0]
    assert torch.equal(kinds > 0, covered > 1 / 3)


def test_quick_recipe_writes_a_loadable_trained_model(tmp_path):
    """The whole recipe end to end at --quick size: the model loads everywhere the default is loaded."""
    from bubogpt.grounding.pipeline import load_grounding
    from bubogpt.reference import ReferencePipeline
    from bubogpt.weights import MANIFEST
    from training.nano.pipeline import Recipe, train_nano

    out = tmp_path / "model"
    report = train_nano(out, Recipe().quick(), workdir=tmp_path / "work", progress=False, command="test")
    for part in ("llm", "vision_encoder", "audio_encoder", "stage1", "stage2", "stage2_no_negatives", "eval", "ablation"):
        assert part in report, part
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["provenance"]["kind"] == "trained" and manifest["provenance"]["command"] == "test"
    assert not (out / "llm").is_symlink()
    assert json.loads((out / "training_report.json").read_text())["recipe"]["seed"] == 0
    pipeline = ReferencePipeline.from_dir(out)
    assert pipeline.generate("What is in the image?", image=make_scene(1).jpeg(), max_new_tokens=4).token_ids
    load_grounding(out)
    # the frozen LLM went into the result unchanged: stage 1 / 2 only moved the modality side
    from safetensors.torch import load_file

    trained = load_file(str(out / "llm" / "model.safetensors"))
    pretrained = load_file(str(tmp_path / "work" / "base" / "llm" / "model.safetensors"))
    assert trained.keys() == pretrained.keys() and all(torch.equal(trained[k], pretrained[k]) for k in trained)


def test_bubo_eval_scores_models_side_by_side(tmp_path, capsys):
    """`bubo eval` with the same model twice: two columns, identical (greedy, deterministic) numbers."""
    from bubo_cli.main import main
    from bubogpt.defaults import default_model_dir

    out = tmp_path / "metrics.json"
    model = str(default_model_dir())
    assert main(["eval", "--model", model, "--model", model, "--images", "6", "--limit", "6",
                 "--corpus-dir", str(tmp_path / "corpus"), "--json-out", str(out), "--overlays", str(tmp_path / "overlays")]) == 0
    columns = json.loads(out.read_text())
    assert len(columns) == 2
    first, second = columns.values()
    assert first == second and first["missing"]["value"] == 0.0 and first["missing"]["n"] == 6
    assert "held-out world evaluation" in capsys.readouterr().out
    assert (tmp_path / "overlays").is_dir() and any((tmp_path / "overlays").rglob("*.png"))


def test_the_pretrained_llm_is_reused_only_for_equal_recipe_fields(tmp_path):
    from training.nano.pipeline import CACHE_KEY, _read_cache

    key = {"llm": {"hidden": 128}, "seed": 0, "llm_steps": 2000}
    (tmp_path / CACHE_KEY).write_text(json.dumps({"key": key, "report": {"steps": 2000}}))
    assert _read_cache(tmp_path, dict(key)) == {"steps": 2000}
    assert _read_cache(tmp_path, {**key, "llm_steps": 2001}) is None
    assert _read_cache(tmp_path / "missing", key) is None
