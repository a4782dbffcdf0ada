"""`bubo llm-server`: the LLM tier as stock vLLM, its own OpenAI-compatible server.

Nothing of ours runs in that process but the `vllm.general_plugins` entry point (serving/vllm_plugin.py,
loaded by vLLM itself in every process it starts), so vLLM's production stack, llm-d and KServe can run
the same command, or the arguments `--print-args` prints, unchanged. The frontend talks to it through
`serving.remote_llm.RemoteLLMEngine`.

The arguments mirror what the in-process engine (`serving.llm_engine.VLLMEngine`) configures, so the
remote tier gives the same greedy tokens:
* `--enable-prompt-embeds`: a request with an image or audio carries its whole prompt as embeddings
  (`/v1/completions` `prompt_embeds`); a text-only request is token ids;
* `--generation-config vllm`: the model directory's generation_config.json must not change sampling
  defaults behind the frontend's back (the frontend always sends temperature, top_p and seed);
* `--enforce-eager` on CPU (see VLLMEngine._engine_args for the measurement);
* `--seed 0`, prefix caching on (and reported per request), the model's full context.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LLMServerOptions:
    weights: Path | None = None  # model directory in our format (default: the built-in nano model)
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    kv_cache_gib: float = 1.0  # CPU only: vLLM's KV cache size (VLLM_CPU_KVCACHE_SPACE)
    max_num_seqs: int = 64
    served_model_name: str | None = None  # default: bubogpt-<preset>


def served_model_name(preset: str) -> str:
    """The model's name on every API (OpenAI HTTP, the LLM tier): bubogpt-nano, bubogpt-7b."""
    return preset if preset.startswith("bubogpt") else f"bubogpt-{preset}"


def vllm_command(options: LLMServerOptions) -> tuple[list[str], dict[str, str]]:
    """The vLLM server's command line and the environment it needs."""
    from bubogpt.defaults import default_model_dir
    from bubogpt.weights import llm_dir, read_config

    model_dir = Path(options.weights) if options.weights else default_model_dir()
    cfg = read_config(model_dir)
    llm = llm_dir(model_dir)
    hidden, context = llm_shape(llm)
    cuda = options.device == "cuda"
    # the rule VLLMEngine._engine_args applies
    dtype = "float32" if hidden <= 1024 else ("float16" if cuda else "bfloat16")
    args = [
        "--model", str(llm),
        "--served-model-name", options.served_model_name or served_model_name(cfg.name),
        "--host", options.host,
        "--port", str(options.port),
        "--dtype", dtype,
        "--max-model-len", str(context),
        "--max-num-seqs", str(options.max_num_seqs),
        "--enable-prompt-embeds",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",  # usage says how much of the prompt the prefix cache served
        "--generation-config", "vllm",
        "--seed", "0",
    ]
    if not cuda:
        args.append("--enforce-eager")
    env = {} if cuda else {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(options.kv_cache_gib))))}
    return _server_entry() + args, env


def llm_shape(llm: Path) -> tuple[int, int]:
    """Hidden width and context of the HF LLM directory (its config.json; no transformers import)."""
    config = json.loads((llm / "config.json").read_text())
    return int(config["hidden_size"]), int(config["max_position_embeddings"])


def _server_entry() -> list[str]:
    """`vllm serve` where the `vllm` distribution is installed (the CUDA build). vLLM's CPU build is
    published as `vllm-cpu`, and its `vllm` CLI looks up the version of a distribution named `vllm`
    and fails; there the same server runs as its module entry point."""
    try:
        importlib.metadata.version("vllm")
        return ["vllm", "serve"]
    except importlib.metadata.PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]


def run(options: LLMServerOptions, print_args: bool = False) -> int:
    """Replaces this process with the vLLM server (signals, exit code and logs are vLLM's own)."""
    argv, env = vllm_command(options)
    if print_args:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + (" " if env else "") + shlex.join(argv))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, {**os.environ, **env})
    return 0  # pragma: no cover - exec does not return
