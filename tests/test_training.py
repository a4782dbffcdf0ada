"""Stage 1 / stage 2 training on the built-in nano model: the loss goes down, frozen parts stay bit for
bit, resuming from a mid-run checkpoint repeats the uninterrupted run exactly, and the outputs load
(our format, and the bubogpt_7b.pth-compatible export through the official-checkpoint loader)."""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path

import pytest
import torch

from bubogpt.defaults import default_model_dir
from bubogpt.model import MODALITY_COMPONENTS
from training.config import config_from_dict
from training.loop import Trainer, lr_at
from training.step_log import read_metrics
from training.tiny_data import write_tiny_datasets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nano():
    from bubogpt.llm import load_llm
    from bubogpt.tokenizer import load_tokenizer
    from bubogpt.weights import llm_dir, load_model

    base = default_model_dir()
    return load_model(base), load_llm(llm_dir(base)), load_tokenizer(llm_dir(base))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_datasets(tmp_path_factory.mktemp("tiny"), count=2)


def stage1_datasets(data):
    return [
        {"name": "images", "kind": "caption_shards", "modality": "image", "shards": [str(data["image_shards"].parent / "images-000000.tar")]},
        {"name": "wavcaps", "kind": "wavcaps", "annotations": [str(data["wavcaps"] / "sb_final.json")], "audio_dir": str(data["wavcaps"] / "audio")},
    ]


def stage2_datasets(data):
    return [
        {"name": "align", "kind": "minigpt4_aligned", "annotations": [str(data["cc_sbu_align"] / "filter_cap.json")],
         "image_dir": str(data["cc_sbu_align"] / "image"), "ratio": 3},
        {"name": "clotho", "kind": "clotho_detail", "annotations": [str(data["clotho"] / "Clotho-detail-annotation.json")],
         "audio_dir": str(data["clotho"] / "audio"), "ratio": 4},
        {"name": "vggss", "kind": "vggss", "annotations": [str(data["vggss"] / "vggss-instruction-tuning.json")],
         "audio_dir": str(data["vggss"] / "audio"), "image_dir": str(data["vggss"] / "image"), "ratio": 5},
        {"name": "llava", "kind": "llava", "annotations": [str(data["llava"] / "llava_instruct.json")],
         "image_dir": str(data["llava"] / "images"), "ratio": 3},
        {"name": "negatives", "kind": "negatives", "image_from": "align", "audio_from": "clotho", "ratio": 3},
    ]


def make_config(stage, out, datasets, steps, lr, save_every=100, **data_overrides):
    data = {"batch_size": 2, "feature_cache_items": 32, "datasets": datasets}
    data.update(data_overrides)
    return config_from_dict({
        "stage": stage, "output_dir": str(out), "seed": 0, "progress": False, "log_every": 1, "save_every": save_every,
        "optim": {"steps": steps, "init_lr": lr, "min_lr": lr / 10, "warmup_lr": lr / 10, "warmup_steps": 2},
        "data": data,
    })


def states(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(before, after, what):
    assert before.keys() == after.keys(), what
    for key in before:
        assert torch.equal(before[key], after[key].cpu()), f"{what}.{key} changed"


def check_outputs(trainer: Trainer, out: Path) -> None:
    """model/ loads with bubogpt.weights; bubogpt.pth loads through the official loader, bit for bit."""
    from bubogpt.official_checkpoints import load_bubogpt_checkpoint
    from bubogpt.qformer import QFormer
    from bubogpt.weights import llm_dir, load_model

    loaded = load_model(out / "model")
    for name in MODALITY_COMPONENTS:
        assert_same(states(getattr(trainer.model, name)), states(getattr(loaded, name)), name)
    assert (llm_dir(out / "model") / "config.json").is_file()
    assert json.loads((out / "model" / "bubogpt.json").read_text())["provenance"]["stage"] == trainer.config.stage

    cfg = trainer.model.config
    torch.manual_seed(123)
    vq, aq = QFormer(cfg.vision_qformer), QFormer(cfg.audio_qformer)
    vp, ap = torch.nn.Linear(cfg.vision_qformer.hidden, cfg.llm.hidden), torch.nn.Linear(cfg.audio_qformer.hidden, cfg.llm.hidden)
    report = load_bubogpt_checkpoint(vq, vp, aq, ap, out / "bubogpt.pth")
    assert not any(k.startswith("vision_qformer") for k in report.loaded)  # frozen: not exported (as the official file)
    assert any(k.startswith("multimodal_joiner.modality_qformers.audio.Qformer.bert.encoder.layer.0") for k in report.loaded.values())
    assert "multimodal_joiner.modality_post_projectors.vision.fc.weight" in report.loaded.values()
    for name, module in (("audio_qformer", aq), ("audio_proj", ap), ("vision_proj", vp)):
        assert_same(states(getattr(trainer.model, name)), states(module), name)


def test_stage1_lowers_the_loss_and_keeps_frozen_parts(tmp_path, nano, data):
    model, llm, tokenizer = copy.deepcopy(nano)
    before = {name: states(getattr(model, name)) for name in MODALITY_COMPONENTS}
    llm_before = states(llm)
    cfg = make_config("stage1", tmp_path / "run", stage1_datasets(data), steps=18, lr=3e-2)
    trainer = Trainer(cfg, model=model, llm=llm, tokenizer=tokenizer)
    history = trainer.fit()

    assert [r["step"] for r in history] == list(range(1, 19))
    for source in ("images", "wavcaps"):  # 2 samples per set: every batch of a set is the same pair
        losses = [r["loss"] for r in history if source in r["sources"]]
        assert len(losses) >= 3, source
        assert losses[-1] < losses[0] - 0.15, (source, losses)
    # frozen: encoders, vision Q-Former, LLM (requires_grad False, eval mode, bit for bit)
    for name in ("vision_encoder", "vision_qformer", "audio_encoder"):
        assert_same(before[name], states(getattr(trainer.model, name)), name)
        assert not getattr(trainer.model, name).training
        assert not any(p.requires_grad for p in getattr(trainer.model, name).parameters())
    assert_same(llm_before, states(trainer.llm), "llm")
    assert not trainer.llm.training and not any(p.requires_grad for p in trainer.llm.parameters())
    for name in ("vision_proj", "audio_qformer", "audio_proj"):
        changed = [k for k, v in before[name].items() if not torch.equal(v, states(getattr(trainer.model, name))[k])]
        assert changed, f"{name} did not train"
    # learning rate: LAVIS warmup then cosine
    assert [r["lr"] for r in history[:4]] == pytest.approx([lr_at(s, cfg.optim) for s in range(4)])
    assert history[0]["lr"] == pytest.approx(3e-3) and history[2]["lr"] < 3e-2
    # logs and outputs
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["loss"] for r in logged] == [r["loss"] for r in history]
    check_outputs(trainer, tmp_path / "run")


def test_stage2_lowers_the_loss_and_resumes_exactly(tmp_path, nano, data):
    model, llm, tokenizer = copy.deepcopy(nano)
    before = {name: states(getattr(model, name)) for name in MODALITY_COMPONENTS}
    llm_before = states(llm)
    cfg = make_config("stage2", tmp_path / "full", stage2_datasets(data), steps=16, lr=5e-2, save_every=8)
    trainer = Trainer(cfg, model=model, llm=llm, tokenizer=tokenizer)
    history = trainer.fit()

    sources = {s for r in history for s in r["sources"]}
    assert sources == {"align", "clotho", "vggss", "llava", "negatives"}
    first, last = [r["loss"] for r in history[:5]], [r["loss"] for r in history[-5:]]
    assert sum(last) / 5 < sum(first) / 5 - 0.05, [r["loss"] for r in history]
    for source in ("align", "clotho", "vggss"):  # fixed sample pairs (only the drawn instruction varies)
        losses = [r["loss"] for r in history if source in r["sources"]]
        if len(losses) >= 2:
            assert losses[-1] < losses[0], (source, losses)
    for name in ("vision_encoder", "vision_qformer", "audio_encoder", "audio_qformer"):
        assert_same(before[name], states(getattr(trainer.model, name)), name)
    assert_same(llm_before, states(trainer.llm), "llm")
    check_outputs(trainer, tmp_path / "full")

    # resume from the step-8 checkpoint (in another folder, decoding in a worker thread this time)
    checkpoint = tmp_path / "full" / "checkpoints" / "step_0000008.pt"
    assert checkpoint.is_file()
    resumed_cfg = make_config("stage2", tmp_path / "resumed", stage2_datasets(data), steps=16, lr=5e-2, save_every=8, num_workers=1)
    model2, llm2, tokenizer2 = copy.deepcopy(nano)
    resumed = Trainer(resumed_cfg, model=model2, llm=llm2, tokenizer=tokenizer2)
    tail = resumed.fit(resume=checkpoint)
    assert [r["step"] for r in tail] == list(range(9, 17))
    assert [r["loss"] for r in tail] == [r["loss"] for r in history[8:]]  # exact, float ==
    assert [r["sources"] for r in tail] == [r["sources"] for r in history[8:]]
    for name in MODALITY_COMPONENTS:
        assert_same(states(getattr(trainer.model, name)), states(getattr(resumed.model, name)), name)
    assert torch.equal(torch.load(tmp_path / "full" / "bubogpt.pth")["model"]["multimodal_joiner.modality_post_projectors.audio.fc.weight"],
                       torch.load(tmp_path / "resumed" / "bubogpt.pth")["model"]["multimodal_joiner.modality_post_projectors.audio.fc.weight"])


def test_resume_refuses_another_stage(tmp_path, nano, data):
    model, llm, tokenizer = copy.deepcopy(nano)
    cfg = make_config("stage1", tmp_path / "s1", stage1_datasets(data)[:1], steps=1, lr=1e-3)
    Trainer(cfg, model=model, llm=llm, tokenizer=tokenizer).fit()
    cfg2 = make_config("stage2", tmp_path / "s2", stage2_datasets(data)[:1], steps=1, lr=1e-3)
    model, llm, tokenizer = copy.deepcopy(nano)
    with pytest.raises(ValueError, match="a stage1 checkpoint cannot resume stage2"):
        Trainer(cfg2, model=model, llm=llm, tokenizer=tokenizer).fit(resume=tmp_path / "s1" / "checkpoints")


def test_cli_hook_runs_a_config(tmp_path, data):
    from training.commands import register

    parser = argparse.ArgumentParser(prog="bubo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "stage1", "--config", "x.toml", "--resume", "latest"])
    assert (args.command, args.stage, args.config, args.resume) == ("train", "stage1", "x.toml", "latest")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "stage3", "--config", "x.toml"])

    shards = str(data["image_shards"].parent / "images-000000.tar")
    config = tmp_path / "tiny.toml"
    config.write_text(f'output_dir = "{tmp_path / "out"}"\nprogress = false\n[optim]\nsteps = 2\ninit_lr = 1e-3\nmin_lr = 1e-4\n'
                      f'accum_steps = 2\n[data]\nbatch_size = 2\n[[data.datasets]]\nname = "images"\nkind = "caption_shards"\nshards = ["{shards}"]\n')
    args = parser.parse_args(["train", "stage1", "--config", str(config)])
    assert args.func(args) == 0
    assert (tmp_path / "out" / "model" / "bubogpt.json").is_file() and (tmp_path / "out" / "bubogpt.pth").is_file()
    (logged,) = read_metrics(tmp_path / "out" / "metrics.jsonl")  # log_every 10: the last step only
    assert logged["step"] == 2 and logged["samples"] == 4  # 2 micro-batches of 2 per step


def test_serving_side_never_imports_training():
    pattern = re.compile(r"^\s*(from\s+training[\s.]|import\s+training\b)", re.MULTILINE)
    offenders = []
    for folder in ("bubogpt", "serving", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            if pattern.search(path.read_text(errors="replace")):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders
