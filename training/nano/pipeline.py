"""`bubo train nano`: the whole recipe that makes the built-in default from a seed.

    corpus (training.world.datasets, seed)                                   the paper's datasets, world edition
    lane 1 (subprocess, 1 thread): training.grounding                        tagger, detector, segmenter
    lane 2 (this process, 1 thread):
      tokenizer (world language)  -> LLM pre-training (then frozen)
      vision encoder + Q-Former, audio encoder + Q-Former (sketch slots, encoders.py)
      stage 1 (vision_proj, audio_qformer, audio_proj; captions)             training.loop.Trainer
      stage 2 (vision_proj, audio_proj; instructions, related and unrelated pairs)
      stage 2 without the negative pairs (the paper's ablation; not kept)
    -> OUT (our model format + grounding/), OUT/training_report.json

Both lanes use one CPU thread each, so the recipe fills a 2-core machine. `--quick` shrinks every
size and step count (tests, smoke runs); the default sizes are the committed default's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    corpus_images: int = 1500
    tokenizer_scenes: int = 300
    llm_examples: int = 12000
    llm_steps: int = 2000
    llm_batch: int = 32
    llm_lr: float = 3e-3
    vision_images: int = 10000
    vision_steps: int = 6000
    vision_lr: float = 3e-3
    audio_sounds: int = 3000
    audio_steps: int = 2000
    audio_batch: int = 8
    audio_lr: float = 2e-3
    held_out: int = 200
    stage1_steps: int = 400
    stage2_steps: int = 500
    stage_batch: int = 16
    stage1_lr: float = 2e-3
    stage2_lr: float = 5e-4
    grounding_corpus_images: int = 2000  # the grounding lane's own corpus (same seed, more images)
    grounding_minutes: float = 32.0
    ablation: bool = True
    eval_seed: int = 1000  # held out: the corpus seeds used for training are recipe.seed and seed + 1_000_003
    eval_images: int = 200

    def quick(self) -> Recipe:
        """Every size and step count cut down: the recipe end to end in a couple of minutes."""
        return dataclasses.replace(
            self, corpus_images=40, tokenizer_scenes=30, llm_examples=200, llm_steps=20, vision_images=48,
            vision_steps=10, audio_sounds=18, audio_steps=4, held_out=16, stage1_steps=6, stage2_steps=6,
            stage_batch=4, grounding_corpus_images=40, grounding_minutes=0.5, eval_images=5,
        )


# The recipe fields the pre-trained LLM depends on (with the LLM config): equal fields, equal LLM.
LLM_FIELDS = ("seed", "tokenizer_scenes", "llm_examples", "llm_steps", "llm_batch", "llm_lr", "held_out")
CACHE_KEY = "recipe_key.json"


def _read_cache(directory: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The saved report of a cached part whose key equals `key`, else None."""
    path = directory / CACHE_KEY
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["report"] if saved.get("key") == json.loads(json.dumps(key)) else None


def _stage_config(path: Path, *, base_model: Path, output_dir: Path, steps: int, batch: int, lr: float, seed: int,
                  progress: bool, drop: tuple[str, ...] = ()):
    from bubogpt.prompt import SYSTEM_TEXT
    from training.config import load_config

    cfg = load_config(path, stage=path.stem.split("_")[0])
    cfg.base_model = str(base_model)
    cfg.output_dir = str(output_dir)
    cfg.seed = seed
    cfg.progress = progress
    cfg.tensorboard = False
    cfg.llm_output = "symlink"
    cfg.save_every = max(steps, 1)
    cfg.keep_checkpoints = 1
    cfg.log_every = max(1, steps // 20)
    cfg.optim.steps = steps
    cfg.optim.init_lr = lr
    cfg.optim.min_lr = lr / 10
    cfg.optim.warmup_steps = max(1, steps // 20)
    cfg.optim.max_grad_norm = 1.0
    cfg.data.batch_size = batch
    cfg.data.feature_cache_items = 100_000  # the frozen fronts of the whole corpus fit in memory
    # the served template: the nano LLM learnt the world's language with the system text
    cfg.data.system_prompt = SYSTEM_TEXT
    for dataset in cfg.data.datasets:
        dataset.question_templates = False  # the LLM reads the questions as users type them
    cfg.data.datasets = [d for d in cfg.data.datasets if d.name not in drop]
    return cfg


def _fit(cfg) -> dict[str, Any]:
    from training.loop import Trainer

    start = time.time()
    history = Trainer(cfg).fit()
    last = history[-1] if history else {}
    return {"steps": cfg.optim.steps, "seconds": round(time.time() - start, 1), "final_loss": round(float(last.get("loss", float("nan"))), 4)}


def _start_grounding_lane(corpus: Path, out: Path, recipe: Recipe, progress: bool, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "training.grounding", "--corpus", str(corpus), "--out", str(out),
               "--minutes", str(recipe.grounding_minutes), "--seed", str(recipe.seed)]
    if not progress:
        command.append("--no-progress")
    log.info("grounding lane: %s (log %s)", " ".join(command), log_path)
    handle = open(log_path, "w")
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])


def train_nano(out: str | Path, recipe: Recipe = Recipe(), workdir: str | Path | None = None, progress: bool = True,
               command: str = "", grounding_from: str | Path | None = None) -> dict[str, Any]:
    """Trains the nano model; writes the model directory OUT and returns the report.

    `grounding_from`: a model directory whose grounding/ was trained separately by
    `python -m training.grounding` (waited for until it appears); the grounding lane is then skipped.
    """
    from bubogpt.config import get_preset
    from bubogpt.llm import build_llm
    from bubogpt.model import BuboGPT
    from bubogpt.tokenizer import build_tokenizer
    from bubogpt.weights import save_model
    from training.nano import encoders, language
    from training.world.datasets import write_corpus

    torch.set_num_threads(1)
    started = time.time()
    out = Path(out)
    work = Path(workdir) if workdir else out.parent / (out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    cfg = get_preset("nano")
    report: dict[str, Any] = {"recipe": dataclasses.asdict(recipe), "command": command}
    timings: dict[str, float] = {}

    def timed(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        log.info("%s done in %.0f s", name, timings[name])

    t0 = time.time()
    corpus = work / "corpus"
    if not (corpus / "world.json").is_file():
        write_corpus(corpus, seed=recipe.seed, images=recipe.corpus_images, progress=progress)
    timed("corpus", t0)

    if grounding_from:
        grounding_out, lane = Path(grounding_from), None
    else:
        grounding_corpus = corpus
        if recipe.grounding_corpus_images != recipe.corpus_images:
            t0 = time.time()
            grounding_corpus = work / "grounding_corpus"
            if not (grounding_corpus / "world.json").is_file():
                write_corpus(grounding_corpus, seed=recipe.seed, images=recipe.grounding_corpus_images, progress=progress)
            timed("grounding_corpus", t0)
        grounding_out = work / "grounding_model"
        lane = _start_grounding_lane(grounding_corpus, grounding_out, recipe, progress=False, log_path=work / "grounding.log")
    try:
        # 1. the world tokenizer and the LLM (then frozen for good); a workdir keeps it for reruns
        #    that change only later parts (the LLM depends on nothing after it)
        t0 = time.time()
        llm_cache = work / "llm_pretrained"
        llm_key = {"llm": dataclasses.asdict(cfg.llm),
                   **{k: getattr(recipe, k) for k in LLM_FIELDS}}
        cached = _read_cache(llm_cache, llm_key)
        if cached is not None:
            from bubogpt.llm import load_llm
            from bubogpt.tokenizer import load_tokenizer

            tokenizer, llm = load_tokenizer(llm_cache), load_llm(llm_cache)
            report["llm"] = {**cached, "reused_from": str(llm_cache)}
            log.info("reusing the pre-trained LLM in %s (same recipe fields)", llm_cache)
        else:
            from bubogpt.llm import save_llm

            tokenizer = build_tokenizer(cfg.llm.vocab_size, language.tokenizer_corpus(recipe.seed, recipe.tokenizer_scenes))
            builder = language.ExampleBuilder(tokenizer)
            train_examples = language.examples(builder, recipe.seed, recipe.llm_examples, progress=progress)
            held_out = language.examples(builder, recipe.seed + 1_000_003, recipe.held_out)
            torch.manual_seed(recipe.seed)
            llm = build_llm(cfg.llm)
            report["llm"] = language.pretrain_llm(llm, train_examples, held_out, steps=recipe.llm_steps, batch_size=recipe.llm_batch,
                                                  lr=recipe.llm_lr, seed=recipe.seed, pad_id=builder.pad_id, progress=progress)
            del train_examples
            save_llm(llm, tokenizer, llm_cache)
            (llm_cache / CACHE_KEY).write_text(json.dumps({"key": llm_key, "report": report["llm"]}, indent=2) + "\n")
        timed("llm", t0)

        # 2. encoders + Q-Formers from the world's truth (each part seeded on its own)
        torch.manual_seed(recipe.seed + 1)
        model = BuboGPT(cfg).eval()
        t0 = time.time()
        torch.manual_seed(recipe.seed + 2)
        vision = encoders.SlotTagger(model.vision_encoder, model.vision_qformer, cfg.vision_qformer.hidden,
                                     encoder_width=cfg.vision.width, dense_classes=encoders.DENSE_OUTPUTS)
        images = encoders.image_set(cfg, recipe.seed, recipe.vision_images, progress=progress)
        report["vision_encoder"] = encoders.train_slots(
            vision, images, encoders.image_set(cfg, recipe.seed + 1_000_003, recipe.held_out), steps=recipe.vision_steps,
            lr=recipe.vision_lr, seed=recipe.seed, name="vision encoder", progress=progress)
        del images
        timed("vision_encoder", t0)
        t0 = time.time()
        torch.manual_seed(recipe.seed + 3)
        audio = encoders.SlotTagger(model.audio_encoder, model.audio_qformer, cfg.audio_qformer.hidden)
        sounds = encoders.audio_set(cfg, recipe.seed, recipe.audio_sounds, progress=progress)
        report["audio_encoder"] = encoders.train_slots(
            audio, sounds, encoders.audio_set(cfg, recipe.seed + 1_000_003, max(8, recipe.held_out // 2)),
            steps=recipe.audio_steps, batch_size=recipe.audio_batch, lr=recipe.audio_lr, seed=recipe.seed,
            name="audio encoder", progress=progress)
        del sounds
        timed("audio_encoder", t0)
        model.eval()
        base = work / "base"
        save_model(model, base, llm=llm, tokenizer=tokenizer, provenance={"kind": "pretrained", "seed": recipe.seed})

        # 3. the paper's two stages (and stage 2 without negatives: the ablation)
        configs = corpus / "configs"
        common = dict(batch=recipe.stage_batch, seed=recipe.seed, progress=progress)
        t0 = time.time()
        report["stage1"] = _fit(_stage_config(configs / "stage1_world.toml", base_model=base, output_dir=work / "stage1",
                                              steps=recipe.stage1_steps, lr=recipe.stage1_lr, **common))
        timed("stage1", t0)
        t0 = time.time()
        report["stage2"] = _fit(_stage_config(configs / "stage2_world.toml", base_model=work / "stage1" / "model",
                                              output_dir=work / "stage2", steps=recipe.stage2_steps, lr=recipe.stage2_lr, **common))
        timed("stage2", t0)
        if recipe.ablation:
            t0 = time.time()
            report["stage2_no_negatives"] = _fit(_stage_config(
                configs / "stage2_world.toml", base_model=work / "stage1" / "model", output_dir=work / "stage2_no_negatives",
                steps=recipe.stage2_steps, lr=recipe.stage2_lr, drop=("negatives",), **common))
            timed("stage2_no_negatives", t0)
    except BaseException:
        if lane is not None:
            lane.kill()
        raise

    # 4. the grounding lane
    t0 = time.time()
    if lane is not None:
        code = lane.wait()
        if code != 0:
            tail = (work / "grounding.log").read_text()[-3000:]
            raise RuntimeError(f"the grounding lane failed with exit code {code}:\n{tail}")
    else:
        while not (grounding_out / "grounding" / "train_report.json").is_file():
            time.sleep(10)
    timed("grounding_wait", t0)
    grounding_report = grounding_out / "grounding" / "train_report.json"
    if grounding_report.is_file():
        report["grounding"] = json.loads(grounding_report.read_text())

    # 5. assemble OUT: the stage-2 model, the LLM copied in (not linked), the grounding nets
    report["timings_s"] = timings
    report["total_minutes"] = round((time.time() - started) / 60, 1)
    assemble(work / "stage2" / "model", grounding_out, out, provenance={
        "kind": "trained", "preset": "nano", "seed": recipe.seed, "command": command or f"bubo train nano --seed {recipe.seed}",
        "recipe": dataclasses.asdict(recipe),
    })

    # 6. held-out evaluation of the result, and the ablation's related/unrelated accuracy side by side
    t0 = time.time()
    from training.nano.evaluate import evaluate_model, held_out_corpus, metrics_json, reference_predictor

    eval_corpus = held_out_corpus(work / f"eval_seed{recipe.eval_seed}", recipe.eval_seed, recipe.eval_images)
    metrics, _ = evaluate_model(reference_predictor(out), eval_corpus, progress=progress, overlays=work / "overlays")
    report["eval"] = metrics_json(metrics)
    if recipe.ablation:
        report["ablation"] = {}
        for label, model_dir in (("with negatives", work / "stage2" / "model"), ("without negatives", work / "stage2_no_negatives" / "model")):
            metrics, _ = evaluate_model(reference_predictor(model_dir, grounding=False), eval_corpus, tasks=("source", "negative"), ground=False)
            report["ablation"][label] = metrics_json(metrics)
    timed("eval", t0)
    report["total_minutes"] = round((time.time() - started) / 60, 1)
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("nano model written to %s in %.1f min", out, report["total_minutes"])
    return report


def assemble(stage2_model: Path, grounding_model: Path, out: Path, provenance: dict[str, Any]) -> Path:
    """A self-contained model directory: components, a real copy of the LLM, grounding/, provenance."""
    from bubogpt.weights import LLM_DIR, MANIFEST

    staging = out.parent / (out.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(stage2_model, staging, symlinks=False)
    llm = staging / LLM_DIR
    if llm.is_symlink():
        target = llm.resolve()
        llm.unlink()
        shutil.copytree(target, llm)
    shutil.copytree(grounding_model / "grounding", staging / "grounding")
    for stray in ("bubogpt.pth",):
        (staging / stray).unlink(missing_ok=True)
    manifest = json.loads((staging / MANIFEST).read_text())
    manifest["provenance"] = provenance
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
