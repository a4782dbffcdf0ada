"""What the frontend itself costs per request at real size, side by side: `python -m benchmarks.frontend_cost`.

* memory: the frontend's RSS after preparing one image+audio prompt for a 7B-shaped LLM directory
  (Vicuna-7B's vocab 32000 and width 4096, the embedding table in fp16 as in the checkpoint), with the
  mm route (token ids + the slots' rows: the table is never read) and the embeds route (the prompt as
  embeddings: the frontend holds the table, in fp32). Each in its own process.
* detokenization: frontend CPU time per streamed token of `StopStringStream` against decoding the
  whole answer again at every token (what it did before), for 32 interleaved streams of 64 and 512
  tokens, with the built-in model's tokenizer.

Writes a markdown table (and JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB, HIDDEN = 32000, 4096


def seven_b_shaped_llm_dir(out: Path) -> Path:
    """The files the frontend reads of a Vicuna-7B directory, at their real shapes: config, the
    tokenizer (the built-in model's: the frontend only encodes the prompt with it) and the embedding
    table in fp16."""
    import torch
    from safetensors.torch import save_file

    from bubogpt.defaults import default_model_dir

    source = default_model_dir() / "llm"
    out.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.suffix != ".safetensors" and path.is_file():
            shutil.copy(path, out / path.name)
    config = json.loads((source / "config.json").read_text())
    config.update(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=11008, num_attention_heads=32,
                  num_key_value_heads=32, head_dim=128, num_hidden_layers=32, max_position_embeddings=2048, dtype="float16")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    table = torch.randn(VOCAB, HIDDEN, generator=torch.Generator().manual_seed(0)).half()
    save_file({"model.embed_tokens.weight": table}, str(out / "model.safetensors"))
    return out


def _rss_child(llm_dir: str, route: str) -> None:
    """In a fresh process: RSS growth from building the engine's frontend half and preparing one prompt."""
    import psutil
    import torch

    from bubogpt.prompt import Turn
    from serving.llm_engine import ModalityEmbeds, SamplingOptions, VLLMEngine

    process = psutil.Process()
    before = process.memory_info().rss
    engine = VLLMEngine(llm_dir, route=route)  # not started: the engine core is another process anyway
    rows = [ModalityEmbeds(m, torch.randn(32, HIDDEN)) for m in ("image", "audio")]
    prepared = engine.prepare([Turn("user", "What do you see and hear?")], rows, SamplingOptions(max_new_tokens=8))
    engine.engine_prompt(prepared)
    print(json.dumps({"route": route, "rss_growth_bytes": process.memory_info().rss - before,
                      "holds_table": engine._embed_table is not None}))


def measure_memory(llm_dir: Path) -> list[dict]:
    rows = []
    for route in ("embeds", "mm"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.frontend_cost", "--rss-child", str(llm_dir), route],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


class FullDecodeStream:
    """Decodes the whole answer again at every token (the frontend's stream before): the cost to beat."""

    def __init__(self, tokenizer):
        self.tokenizer, self.token_ids, self.text = tokenizer, [], ""

    def push(self, token_id: int):
        self.token_ids.append(token_id)
        full = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        delta, self.text = full[len(self.text):], full
        return delta, False


def measure_detokenizer(streams: int = 32, lengths: tuple[int, ...] = (64, 512)) -> list[dict]:
    from bubogpt.defaults import default_model_dir
    from bubogpt.tokenizer import load_tokenizer
    from serving.llm_engine import StopStringStream

    tokenizer = load_tokenizer(default_model_dir() / "llm")
    sentence = "There is a red ball on the left, two small dogs near the water and a tall tree behind them. "
    ids = tokenizer.encode(sentence * 200, add_special_tokens=False)
    rows = []
    for length in lengths:
        row = {"streams": streams, "tokens": length}
        for name, make in (("full decode", FullDecodeStream), ("window", StopStringStream)):
            active = [make(tokenizer) for _ in range(streams)]
            start = time.process_time()
            for position in range(length):  # interleaved, as the event loop sees them
                for stream in active:
                    stream.push(ids[position])
            row[f"{name} us/token"] = (time.process_time() - start) / (length * streams) * 1e6
        row["ratio"] = row["full decode us/token"] / row["window us/token"]
        rows.append(row)
    return rows


def markdown(memory: list[dict], detokenizer: list[dict]) -> str:
    lines = ["| route (7B-shaped LLM directory) | frontend RSS growth, one prepared prompt | holds the embedding table |",
             "| --- | ---: | :---: |"]
    lines += [f"| {row['route']} | {row['rss_growth_bytes'] / 2**20:.0f} MiB | {'yes' if row['holds_table'] else 'no'} |" for row in memory]
    lines += ["", "| streams x tokens | decode the whole answer per token | window (StopStringStream) | ratio |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {row['streams']} x {row['tokens']} | {row['full decode us/token']:.0f} us | {row['window us/token']:.0f} us | "
              f"{row['ratio']:.1f}x |" for row in detokenizer]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontend_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rss-child", nargs=2, metavar=("LLM_DIR", "ROUTE"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.rss_child:
        _rss_child(*args.rss_child)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        memory = measure_memory(seven_b_shaped_llm_dir(Path(scratch) / "llm"))
    detokenizer = measure_detokenizer()
    print(markdown(memory, detokenizer))
    if args.json:
        Path(args.json).write_text(json.dumps({"memory": memory, "detokenizer": detokenizer}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
