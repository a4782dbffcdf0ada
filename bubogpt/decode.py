"""The one decode loop: prompt embeddings in, one token id at a time out, with the KV cache.

Used by the reference pipeline (greedy, the oracle for vLLM) and by the plain PyTorch serving engine
(greedy or sampled). Stop strings are the caller's business: it stops by leaving the loop.
"""

from __future__ import annotations

from typing import Iterator

import torch


def sample_token(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> int:
    """Greedy at temperature 0; otherwise a draw from softmax(logits / temperature), restricted to the
    smallest set of tokens whose probability reaches `top_p` (nucleus sampling)."""
    if temperature == 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the token that crosses top_p stays in
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def decode_tokens(llm, embeds: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0,
                  seed: int | None = None, eos_token_id: int | None = None, min_new_tokens: int = 0) -> Iterator[int]:
    """Yields up to `max_new_tokens` token ids for the prompt `embeds` ([seq, hidden]); the end-of-
    sequence token, when drawn, is yielded and ends the loop. It cannot be drawn among the first
    `min_new_tokens` (its logit is -inf there, as vLLM's min_tokens does). Sampling is reproducible:
    the same seed (default 0) gives the same tokens."""
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    with torch.inference_mode():
        out = llm(inputs_embeds=embeds[None], use_cache=True)
    for step in range(max_new_tokens):
        logits = out.logits[0, -1]
        if step < min_new_tokens and eos_token_id is not None:
            logits = logits.clone()
            logits[eos_token_id] = float("-inf")
        next_id = sample_token(logits, temperature, top_p, generator)
        yield next_id
        if next_id == eos_token_id:
            return
        with torch.inference_mode():
            out = llm(input_ids=torch.tensor([[next_id]]), past_key_values=out.past_key_values, use_cache=True)
