"""The one training loop of the world trainers (training/nano, training/grounding), and its optimizer step.

    result = train_steps(model.parameters(), loss_of, steps=1000, lr=2e-3, weight_decay=0.05, label="tagger")

`loss_of(step)` draws its own batch and returns the loss, or (loss, {name: float}) with parts to show
on the progress bar. Around it every trainer runs the same step: AdamW, warm-up + cosine learning rate
(training/schedule.py), zero_grad / backward / clip / step. A wall-clock `deadline` ends the schedule
early only on a machine much slower than planned; step counts stay fixed, so a seed gives one result.

`training.loop.Trainer` keeps its own loop (resume, gradient accumulation, AMP, DDP) and steps with
`optimizer_step`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from training.schedule import cosine_lr

log = logging.getLogger(__name__)

# loss_of(step) -> loss, or (loss, {name: float}): parts shown on the progress bar
LossOf = Callable[[int], "torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]"]


@dataclass
class StepsResult:
    steps: int  # steps taken: all of them unless the deadline came first
    losses: list[float]  # one per step taken
    seconds: float

    def summary(self, window: int = 20) -> dict[str, int | float | None]:
        """{"steps", "loss_first", "loss_last"}: the mean loss of the first and of the last `window` steps."""
        first = float(np.mean(self.losses[:window])) if self.losses else None
        last = float(np.mean(self.losses[-window:])) if self.losses else None
        return {"steps": self.steps, "loss_first": first, "loss_last": last}


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], max_grad_norm: float,
                   scaler: torch.amp.GradScaler | None = None) -> float | None:
    """Clips the gradients to `max_grad_norm` (when > 0) and steps. -> the norm before clipping, or None.

    With a GradScaler the gradients are unscaled before clipping, and the scaler steps and updates."""
    grad_norm = None
    if max_grad_norm > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return grad_norm


def train_steps(params: Iterable[torch.nn.Parameter], loss_of: LossOf, *, steps: int, lr: float,
                weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), lr_floor: float = 0.1,
                max_grad_norm: float = 1.0, deadline: float | None = None, label: str = "training",
                progress: bool = True, log_every: int = 20,
                after_step: Callable[[int], None] | None = None) -> StepsResult:
    """Runs `steps` optimizer steps of AdamW on `params` with the loss of `loss_of(step)`.

    The learning rate warms up linearly over the first 5% of the steps to `lr`, then follows a cosine
    down to `lr_floor * lr`. `deadline` (time.monotonic()) stops early; `after_step(steps_done)` runs
    after each step (held-out evaluations).
    """
    from tqdm import tqdm

    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    losses: list[float] = []
    start = time.monotonic()
    bar = tqdm(range(steps), desc=label, disable=not progress, unit="step")
    for step in bar:
        if deadline is not None and time.monotonic() > deadline:
            log.warning("%s: time budget reached after %d of %d steps", label, step, steps)
            break
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup, floor=lr_floor)
        out = loss_of(step)
        loss, parts = out if isinstance(out, tuple) else (out, {})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(optimizer, params, max_grad_norm)
        losses.append(loss.item())
        if step % log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", **{name: f"{value:.3f}" for name, value in parts.items()})
        if after_step is not None:
            after_step(step + 1)
    result = StepsResult(len(losses), losses, time.monotonic() - start)
    if losses:
        log.info("%s: %d steps in %.1f s, loss %.4f -> %.4f", label, result.steps, result.seconds, losses[0], losses[-1])
    return result
