"""BuboGPT's conversation template, and the splice of modality embeddings into the prompt.

The prompt is the demo's (`eval_scripts/conversation.py` of the official code):

    <system>###Human: <Vision><ModalityHere></Vision> <Audio><ModalityHere></Audio> question###Assistant: answer###Human: ...###Assistant:

Each `<ModalityHere>` is replaced by the 32 projected query embeddings of that modality. The text
between placeholders is tokenized segment by segment, and only the first segment gets BOS, exactly
as the official model does, so the token ids are the same on every path (reference, vLLM).
Generation stops at `###`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

SYSTEM_TEXT = (
    "Give the following image: <Vision>ImageContent</Vision> or audio: <Audio>AudioContent</Audio>. "
    "You will be able to see the image/audio once I provide it to you. Please answer my questions."
)
SEP = "###"
STOP_STRING = "###"
PLACEHOLDER = "<ModalityHere>"
HUMAN, ASSISTANT = "Human", "Assistant"
MODALITY_TAGS = {"image": "Vision", "audio": "Audio"}
RESERVED = (SEP, PLACEHOLDER)

Modality = Literal["image", "audio"]


class PromptError(ValueError):
    """A conversation that cannot be turned into a prompt; the message names the turn and field."""


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


def modality_block(modalities: Sequence[Modality]) -> str:
    parts = []
    for modality in modalities:
        if modality not in MODALITY_TAGS:
            raise PromptError(f"unknown modality {modality!r}; expected one of {sorted(MODALITY_TAGS)}")
        tag = MODALITY_TAGS[modality]
        parts.append(f"<{tag}>{PLACEHOLDER}</{tag}>")
    return " ".join(parts)


def build_prompt(turns: Sequence[Turn], modalities: Sequence[Modality] = (), system: str = SYSTEM_TEXT) -> str:
    """Conversation -> prompt text with one placeholder per modality, ending with `###Assistant:`.

    Turns alternate user/assistant and end with a user turn. The modalities (in the given order)
    open the first user turn, as the demo places uploads before the first question.
    """
    if not turns:
        raise PromptError("turns: the conversation is empty")
    if len(set(modalities)) != len(modalities):
        raise PromptError(f"modalities: each modality may appear once, got {list(modalities)}")
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise PromptError(f"turns[{i}].role: expected {expected!r} (turns alternate, starting with user), got {turn.role!r}")
        for reserved in RESERVED:
            if reserved in turn.text:
                raise PromptError(f"turns[{i}].text: contains the reserved sequence {reserved!r}")
    if turns[-1].role != "user":
        raise PromptError("turns: the last turn must be the user's")

    prompt = system + SEP
    for i, turn in enumerate(turns):
        text = turn.text.strip()
        if i == 0 and modalities:
            text = modality_block(modalities) + (" " + text if text else "")
        role = HUMAN if turn.role == "user" else ASSISTANT
        prompt += f"{role}: {text}{SEP}"
    return prompt + f"{ASSISTANT}:"


def tokenize_segments(tokenizer, prompt: str) -> list[list[int]]:
    """Prompt -> token ids of the text around each placeholder; BOS only on the first segment."""
    segments = prompt.split(PLACEHOLDER)
    return [list(tokenizer(segment, add_special_tokens=(i == 0))["input_ids"]) for i, segment in enumerate(segments)]


@dataclass(frozen=True)
class PromptLayout:
    """Where text tokens and modality embeddings go in the LLM's input sequence.

    `token_ids` has the full sequence length; rows that hold modality embeddings carry `fill_id`
    and are False in `is_text`. `slots` lists (start, length) of each modality, in prompt order.
    """

    token_ids: list[int]
    is_text: list[bool]
    slots: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.token_ids)


def layout_prompt(tokenizer, prompt: str, num_query_tokens: int, fill_id: int = 0) -> PromptLayout:
    segments = tokenize_segments(tokenizer, prompt)
    token_ids: list[int] = []
    is_text: list[bool] = []
    slots: list[tuple[int, int]] = []
    for i, segment in enumerate(segments):
        if i > 0:
            slots.append((len(token_ids), num_query_tokens))
            token_ids += [fill_id] * num_query_tokens
            is_text += [False] * num_query_tokens
        token_ids += segment
        is_text += [True] * len(segment)
    return PromptLayout(token_ids=token_ids, is_text=is_text, slots=slots)


def splice_embeddings(
    layout: PromptLayout,
    modality_embeds: Sequence[torch.Tensor],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Token embeddings with each slot replaced by its modality embeddings -> [seq, hidden]."""
    if len(modality_embeds) != len(layout.slots):
        raise PromptError(f"the prompt has {len(layout.slots)} modality slots but {len(modality_embeds)} embeddings were given")
    ids = torch.tensor(layout.token_ids, dtype=torch.long)
    embeds = embed_tokens(ids).clone()
    for (start, length), rows in zip(layout.slots, modality_embeds):
        if tuple(rows.shape) != (length, embeds.shape[-1]):
            raise PromptError(f"modality embeddings must be [{length}, {embeds.shape[-1]}], got {list(rows.shape)}")
        embeds[start : start + length] = rows.to(embeds.dtype)
    return embeds


def truncate_at_stop(text: str, stops: tuple[str, ...] = (STOP_STRING,)) -> tuple[str, bool]:
    """Cuts generated text at the first of the stop strings; returns (text, stopped)."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    if not found:
        return text, False
    return text[: min(found)], True
