"""Pre-training of the nano encoders and Q-Formers from the world's truth (BLIP-2 / ImageBind analogues).

BuboGPT starts from pre-trained encoders: EVA-ViT-g + BLIP-2's Q-Former (frozen in both stages) and
ImageBind's audio encoder (frozen; its Q-Former is trained in stage 1). The nano model has no such
checkpoints, so this module makes them: encoder + Q-Former + a linear head, trained so that query i
names word i of the modality's sketch (sketch.py) — the objects left to right with colour, size and
place; the sound's kind, count, loudness, background and length. The head is thrown away afterwards;
stage 1 learns the projections into the LLM.

Training media are generated on the fly from seeds (scenes as JPEG, sounds as WAV, decoded by the
served front ends), so the encoders see what the server feeds them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from bubogpt.audio_encoder import ImageBindAudioEncoder
from bubogpt.audio_features import audio_bytes_to_clips
from bubogpt.config import BuboConfig
from bubogpt.image import image_bytes_to_pixels
from bubogpt.qformer import QFormer
from bubogpt.vision_encoder import EvaViT
from training.nano.sketch import PAD, VOCABULARY, audio_sketch, image_sketch
from training.steps import train_steps
from training.world import derive_seed
from training.world.scene import COLORS, OBJECT_KINDS, make_scene
from training.world.sound import SOUND_NAMES, make_sound

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = (PAD, *VOCABULARY)
CLASS_INDEX = {word: i for i, word in enumerate(CLASSES)}


class SlotTagger(nn.Module):
    """encoder -> Q-Former -> per-query logits over the sketch words.

    With `dense_classes`, a second head labels every encoder patch token (which object kind and colour
    covers it): dense supervision that teaches a 2-layer ViT shapes and colours in minutes.
    """

    def __init__(self, encoder: nn.Module, qformer: QFormer, hidden: int, encoder_width: int = 0, dense_classes: int = 0):
        super().__init__()
        self.encoder = encoder
        self.qformer = qformer
        self.head = nn.Linear(hidden, len(CLASSES))
        self.dense_head = nn.Linear(encoder_width, dense_classes) if dense_classes else None

    def forward(self, inputs: torch.Tensor, dense: bool = False):
        features = self.encoder(inputs)
        logits = self.head(self.qformer(features))
        if dense and self.dense_head is not None:
            return logits, self.dense_head(features[:, 1:])
        return logits


@dataclass
class MediaSet:
    inputs: torch.Tensor  # [N, ...] float16
    targets: torch.Tensor  # [N, num_queries] class indices
    dense: torch.Tensor | None = None  # [N, patches, 2]: kind and colour index per patch (0 = none)

    def __len__(self) -> int:
        return len(self.targets)


def _targets(words: Sequence[str]) -> list[int]:
    return [CLASS_INDEX[w] for w in words]


POSITION_WEIGHT = 4.0
DENSE_KINDS = ("none", *OBJECT_KINDS)
DENSE_COLORS = ("none", *COLORS)
DENSE_OUTPUTS = len(DENSE_KINDS) + len(DENSE_COLORS) + 2  # kind logits, colour logits, (x, y)


def patch_xy(patches: int) -> torch.Tensor:
    """[patches, 2]: (x, y) of each patch centre in [-1, 1], row-major."""
    grid = int(round(patches**0.5))
    axis = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1)


def patch_labels(scene, grid: int) -> torch.Tensor:
    """[grid*grid, 2]: per patch of the resized image, the kind and colour of the object covering most of
    it (at least a third of the patch), else 0."""
    cover = torch.zeros(len(scene.objects) + 1, grid, grid)
    for k, obj in enumerate(scene.objects, start=1):
        mask = torch.from_numpy(obj.mask).float()[None, None]
        cover[k] = nn.functional.interpolate(mask, size=(grid, grid), mode="area")[0, 0]
    cover[0] = 1 / 3
    owner = cover.argmax(0).flatten()
    kinds = torch.tensor([0] + [DENSE_KINDS.index(o.kind) for o in scene.objects])
    colors = torch.tensor([0] + [DENSE_COLORS.index(o.color) for o in scene.objects])
    return torch.stack([kinds[owner], colors[owner]], dim=-1)


def image_set(cfg: BuboConfig, seed: int, count: int, progress: bool = False) -> MediaSet:
    from tqdm import tqdm

    grid = cfg.vision.image_size // cfg.vision.patch_size
    inputs, targets, dense = [], [], []
    for i in tqdm(range(count), desc="images", disable=not progress, unit="img"):
        scene = make_scene(derive_seed(seed, "encoder-scene", i))
        inputs.append(image_bytes_to_pixels(scene.jpeg(), cfg.vision).to(torch.float16))
        targets.append(_targets(image_sketch(scene, cfg.vision_qformer.num_queries)))
        dense.append(patch_labels(scene, grid))
    return MediaSet(torch.stack(inputs), torch.tensor(targets), torch.stack(dense))


def audio_set(cfg: BuboConfig, seed: int, count: int, progress: bool = False) -> MediaSet:
    from tqdm import tqdm

    inputs, targets = [], []
    for i in tqdm(range(count), desc="sounds", disable=not progress, unit="snd"):
        sound = make_sound(derive_seed(seed, "encoder-sound", i), SOUND_NAMES[i % len(SOUND_NAMES)])
        inputs.append(audio_bytes_to_clips(sound.wav(), cfg.audio).to(torch.float16))
        targets.append(_targets(audio_sketch(sound, cfg.audio_qformer.num_queries)))
    return MediaSet(torch.stack(inputs), torch.tensor(targets))


def slot_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(accuracy over non-PAD slots, fraction of samples with every slot right)."""
    predicted = logits.argmax(-1)
    content = targets != CLASS_INDEX[PAD]
    slot = (predicted == targets)[content].float().mean().item()
    exact = (predicted == targets).all(dim=-1).float().mean().item()
    return slot, exact


@torch.no_grad()
def evaluate_slots(model: SlotTagger, data: MediaSet, batch_size: int = 64) -> dict:
    model.eval()
    logits = torch.cat([model(data.inputs[i : i + batch_size].float()) for i in range(0, len(data), batch_size)])
    slot, exact = slot_accuracy(logits, data.targets)
    return {"slot_accuracy": round(slot, 4), "exact_match": round(exact, 4)}


def train_slots(model: SlotTagger, train: MediaSet, held_out: MediaSet, *, steps: int, batch_size: int = 32,
                lr: float = 2e-3, seed: int = 0, name: str = "encoder", progress: bool = True,
                augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> dict:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.ones(len(CLASSES))
    weights[CLASS_INDEX[PAD]] = 0.5  # most slots are padding (absent kinds); the content slots matter more
    model.train()

    def loss_of(step: int):
        index = torch.randint(len(train), (batch_size,), generator=generator)
        inputs = train.inputs[index].float()
        if augment is not None:
            inputs = augment(inputs, generator)
        if train.dense is not None and model.dense_head is not None:
            logits, dense = model(inputs, dense=True)
            dense_loss = dense_patch_loss(dense, train.dense[index])
        else:
            logits, dense_loss = model(inputs), 0.0
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), train.targets[index].flatten(), weight=weights) + dense_loss
        slot, _ = slot_accuracy(logits.detach(), train.targets[index])
        return loss, {"slot": slot}

    result = train_steps(model.parameters(), loss_of, steps=steps, lr=lr, weight_decay=0.05,
                         label=f"{name} pre-training", progress=progress)
    report = {"steps": steps, "seconds": round(result.seconds, 1), "train_loss": round(result.losses[-1], 4),
              **evaluate_slots(model, held_out)}
    model.eval()
    return report


def dense_patch_loss(dense: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-patch kind and colour cross-entropy (+ the patch's place, when the head predicts it)."""
    kinds, colors = len(DENSE_KINDS), len(DENSE_COLORS)
    loss = nn.functional.cross_entropy(dense[..., :kinds].flatten(0, 1), target[..., 0].flatten()) + \
        nn.functional.cross_entropy(dense[..., kinds : kinds + colors].flatten(0, 1), target[..., 1].flatten())
    if dense.shape[-1] > kinds + colors:  # where each patch is, linearly: object places survive pooling
        place = dense[..., kinds + colors :]
        loss = loss + POSITION_WEIGHT * nn.functional.mse_loss(place, patch_xy(dense.shape[1]).expand_as(place))
    return loss


def vision_slot_tagger(cfg: BuboConfig) -> SlotTagger:
    return SlotTagger(EvaViT(cfg.vision), QFormer(cfg.vision_qformer), cfg.vision_qformer.hidden,
                      encoder_width=cfg.vision.width, dense_classes=DENSE_OUTPUTS)


def audio_slot_tagger(cfg: BuboConfig) -> SlotTagger:
    return SlotTagger(ImageBindAudioEncoder(cfg.audio), QFormer(cfg.audio_qformer), cfg.audio_qformer.hidden)
