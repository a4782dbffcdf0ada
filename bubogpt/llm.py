"""The LLM side: LLaMA/Vicuna through transformers' LlamaForCausalLM (reference path and training).

Serving runs the same weights in vLLM; this module is the plain PyTorch definition they are
checked against.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bubogpt.config import LLMConfig


def hf_llama_config(cfg: LLMConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
        hidden_act="silu",
        torch_dtype="float32",
    )


def llm_config_from_hf(hf) -> LLMConfig:
    rope_theta = getattr(hf, "rope_theta", None)
    if rope_theta is None:  # transformers 5 keeps it in rope_parameters
        rope_theta = (getattr(hf, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return LLMConfig(
        vocab_size=hf.vocab_size,
        hidden=hf.hidden_size,
        intermediate=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=hf.num_attention_heads,
        num_kv_heads=hf.num_key_value_heads,
        max_position_embeddings=hf.max_position_embeddings,
        rms_norm_eps=hf.rms_norm_eps,
        rope_theta=float(rope_theta),
        bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id if isinstance(hf.eos_token_id, int) else hf.eos_token_id[0],
        pad_token_id=hf.pad_token_id if hf.pad_token_id is not None else 0,
        tie_word_embeddings=bool(hf.tie_word_embeddings),
    )


def build_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32):
    """A randomly initialised LlamaForCausalLM (use torch.device('meta') around it to count only),
    created directly in `dtype` (a 7B model in float32 would not fit beside anything in 24 GiB)."""
    from transformers import LlamaForCausalLM

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = LlamaForCausalLM(hf_llama_config(cfg))
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def load_llm(path: str | Path, dtype: torch.dtype = torch.float32):
    """Loads a Hugging Face LLaMA/Vicuna directory (ours or the official Vicuna weights)."""
    from transformers import LlamaForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no config.json)")
    return LlamaForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def save_llm(model, tokenizer, path: str | Path) -> None:
    """Writes an HF directory that both transformers and vLLM load (safetensors, tokenizer beside)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # 2 GB shards: safetensors copies a shard into memory while writing it
    model.save_pretrained(str(path), safe_serialization=True, max_shard_size="2GB")
    tokenizer.save_pretrained(str(path))
