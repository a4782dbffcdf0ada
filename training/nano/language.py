"""The nano LLM's world language: its tokenizer, its training examples, and its pre-training.

Examples use the exact layouts of stage 1 and stage 2 (and of serving), with sketches (sketch.py) in
the modality slots:

    stage-1 form   <s> [sketch] caption\\n
    dialogue form  <s> system###Human: <Vision>[sketch]</Vision> <Audio>[sketch]</Audio> question###Assistant: answer###...

The loss is on the answers (and the captions). After pre-training the LLM is frozen for good.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from bubogpt.prompt import SYSTEM_TEXT, Turn, build_prompt, tokenize_segments
from training.batches import IGNORE_INDEX
from training.nano.sketch import PAD, VOCABULARY, audio_sketch, image_sketch, word_ids
from training.prompts import AUDIO, AUDIO_IMAGE, IMAGE, NEGATIVE
from training.steps import train_steps
from training.world import derive_seed
from training.world import language as lang
from training.world.scene import make_scene
from training.world.sound import SOUND_NAMES, SOURCE_SOUNDS, make_sound

log = logging.getLogger(__name__)

NUM_QUERIES = 32

# How often each kind of example is drawn (stage-1 captions, image / audio / paired dialogues).
TASK_WEIGHTS = {
    "image_caption": 2, "audio_caption": 1, "describe": 2, "qa": 4, "audio": 2,
    "source": 2, "unrelated": 2, "relation": 1,
}


@dataclass
class Example:
    token_ids: list[int]
    labels: list[int]
    task: str


def tokenizer_corpus(seed: int = 0, scenes: int = 400) -> list[str]:
    """Texts the nano tokenizer learns its pieces from: the prompt template, the instruction pools,
    the world's language, and every sketch word (so each is one token)."""
    rng = random.Random(seed)
    texts = [SYSTEM_TEXT + "###Human: <Vision></Vision> <Audio></Audio> ###Assistant: "] * 20
    texts += list(IMAGE + AUDIO + AUDIO_IMAGE + NEGATIVE) * 5
    texts += [" ".join(VOCABULARY)] * 30
    for i in range(scenes):
        scene = make_scene(derive_seed(seed, "tokenizer-scene", i))
        sound = make_sound(derive_seed(seed, "tokenizer-sound", i), SOUND_NAMES[i % len(SOUND_NAMES)])
        texts += [lang.caption(scene, rng), lang.description(scene, rng), lang.audio_caption(sound, rng),
                  lang.audio_description(sound, rng)]
        texts += [qa.question + " " + qa.answer for qa in lang.questions(scene, rng, 3)]
    return texts


class ExampleBuilder:
    """Scenes and sounds -> token ids and loss targets, with sketches in the modality slots."""

    def __init__(self, tokenizer, system: str = SYSTEM_TEXT, max_len: int = 512):
        self.tokenizer = tokenizer
        self.system = system
        self.max_len = max_len
        self.pad_id = word_ids(tokenizer, [PAD])[0]

    def _text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stage1(self, sketch: list[str], caption: str, task: str) -> Example:
        ids = [self.tokenizer.bos_token_id] + word_ids(self.tokenizer, sketch)
        answer = self._text(caption + "\n")
        return Example(ids + answer, [IGNORE_INDEX] * len(ids) + answer, task)

    def dialogue(self, sketches: Sequence[tuple[str, list[str]]], qas: Sequence[tuple[str, str]], task: str) -> Example:
        """A dialogue whose last answer is the target; earlier turns are history, tokenized as the server
        tokenizes a conversation (the whole prompt, segment by segment)."""
        modalities = [m for m, _ in sketches]
        turns: list[Turn] = []
        for question, answer in qas[:-1]:
            turns += [Turn("user", question), Turn("assistant", answer.strip())]
        turns.append(Turn("user", qas[-1][0]))
        prompt = build_prompt(turns, modalities, system=self.system)
        ids: list[int] = []
        for i, segment in enumerate(tokenize_segments(self.tokenizer, prompt)):
            if i > 0:
                ids += word_ids(self.tokenizer, sketches[i - 1][1])
            ids += segment
        reply = self._text(qas[-1][1].strip() + "###")
        return Example((ids + reply)[: self.max_len], ([IGNORE_INDEX] * len(ids) + reply)[: self.max_len], task)


def make_example(builder: ExampleBuilder, seed: int, index: int) -> Example:
    """Example `index` of the pre-training stream of `seed` (a pure function of both)."""
    rng = random.Random(derive_seed(seed, "llm-example", index))
    tasks = list(TASK_WEIGHTS)
    task = rng.choices(tasks, weights=[TASK_WEIGHTS[t] for t in tasks])[0]
    scene_seed, sound_seed = derive_seed(seed, "llm-scene", index), derive_seed(seed, "llm-sound", index)
    if task in ("image_caption", "describe", "qa"):
        scene = make_scene(scene_seed)
        sketch = image_sketch(scene, NUM_QUERIES)
        if task == "image_caption":
            return builder.stage1(sketch, lang.caption(scene, rng), task)
        if task == "describe":
            return builder.dialogue([("image", sketch)], [(rng.choice(IMAGE), lang.description(scene, rng))], task)
        qas = lang.questions(scene, rng, rng.randint(1, 3))
        return builder.dialogue([("image", sketch)], [(qa.question, qa.answer) for qa in qas], task)
    if task in ("audio_caption", "audio"):
        sound = make_sound(sound_seed, SOUND_NAMES[rng.randrange(len(SOUND_NAMES))])
        sketch = audio_sketch(sound, NUM_QUERIES)
        if task == "audio_caption":
            return builder.stage1(sketch, lang.audio_caption(sound, rng), task)
        return builder.dialogue([("audio", sketch)], [(rng.choice(AUDIO), lang.audio_description(sound, rng))], task)
    # image + audio pairs
    if task == "source" or (task == "relation" and rng.random() < 0.5):
        kind = SOURCE_SOUNDS[rng.randrange(len(SOURCE_SOUNDS))]
        sound = make_sound(sound_seed, kind)
        scene = make_scene(scene_seed, require=[kind], unique=[kind])
    else:
        sound = make_sound(sound_seed, SOUND_NAMES[rng.randrange(len(SOUND_NAMES))])
        scene = make_scene(scene_seed, exclude=[sound.source] if sound.source else [])
    sketches = [("image", image_sketch(scene, NUM_QUERIES)), ("audio", audio_sketch(sound, NUM_QUERIES))]
    if task == "source":
        qa = (rng.choice(AUDIO_IMAGE), lang.source_answer(scene, sound, rng))
    elif task == "unrelated":
        instruction = rng.choice(NEGATIVE)
        statement = "related" in instruction or rng.random() < 0.5
        qa = (instruction, lang.unrelated_answer(scene, sound, rng, statement=statement))
    else:
        qa = (lang.RELATED_QUESTION, lang.pair_answer(scene, sound, rng, yes=True))
    return builder.dialogue(sketches, [qa], task)


def examples(builder: ExampleBuilder, seed: int, count: int, progress: bool = False) -> list[Example]:
    from tqdm import tqdm

    return [make_example(builder, seed, i) for i in tqdm(range(count), desc="LLM examples", disable=not progress, unit="ex")]


def collate(batch: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(e.token_ids) for e in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.token_ids)] = torch.tensor(e.token_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.token_ids)] = 1
    return ids, labels, mask


def lm_loss(llm, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None,
            inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over target positions, and the per-target correctness."""
    if inputs_embeds is None:
        out = llm(input_ids=ids, attention_mask=mask)
    else:
        out = llm(inputs_embeds=inputs_embeds, attention_mask=mask)
    logits = out.logits[:, :-1].float()
    targets = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    valid = targets != IGNORE_INDEX
    correct = (logits.argmax(-1) == targets)[valid]
    return loss, correct


def pretrain_llm(llm, train: Sequence[Example], held_out: Sequence[Example], *, steps: int, batch_size: int = 32,
                 lr: float = 3e-3, seed: int = 0, pad_id: int = 0, progress: bool = True, eval_every: int = 0) -> dict:
    """Trains `llm` in place on `train`; returns a report (final losses and token accuracies)."""
    generator = torch.Generator().manual_seed(seed)
    llm.train()
    # epochs of shuffled examples; a batch never spans two epochs
    order = torch.randperm(len(train), generator=generator).tolist()
    cursor = 0

    def loss_of(step: int):
        nonlocal order, cursor
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(train), generator=generator).tolist(), 0
        batch = [train[i] for i in order[cursor : cursor + batch_size]]
        cursor += batch_size
        loss, correct = lm_loss(llm, *collate(batch, pad_id))
        return loss, {"acc": correct.float().mean().item()}

    history = []

    def evaluate(done: int) -> None:
        if eval_every and done % eval_every == 0:
            history.append({"step": done, **evaluate_llm(llm, held_out, pad_id)})
            llm.train()

    result = train_steps(llm.parameters(), loss_of, steps=steps, lr=lr, betas=(0.9, 0.98), weight_decay=0.01,
                         label="LLM pre-training", progress=progress, after_step=evaluate)
    llm.eval()
    report = {"steps": steps, "seconds": round(result.seconds, 1), "train_loss": round(result.losses[-1], 4),
              **evaluate_llm(llm, held_out, pad_id)}
    if history:
        report["history"] = history
    return report


@torch.no_grad()
def evaluate_llm(llm, held_out: Sequence[Example], pad_id: int = 0) -> dict:
    """Teacher-forced loss and answer-token accuracy on held-out examples, overall and per task
    (one example at a time: no padding in the way)."""
    llm.eval()
    losses, per_task = [], {}
    total_correct = total = 0
    for e in held_out:
        loss, correct = lm_loss(llm, *collate([e], pad_id))
        losses.append(loss.item())
        stats = per_task.setdefault(e.task, [0, 0])
        stats[0] += int(correct.sum())
        stats[1] += correct.numel()
        total_correct += int(correct.sum())
        total += correct.numel()
    return {"held_out_loss": round(sum(losses) / max(1, len(losses)), 4),
            "held_out_token_accuracy": round(total_correct / max(1, total), 4),
            "token_accuracy_by_task": {t: round(c / max(1, n), 4) for t, (c, n) in sorted(per_task.items())}}
