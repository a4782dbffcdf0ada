"""The CPU repository's two layouts for image_embed / audio_embed, interleaved: one `bubo serve` per
layout, both running, then rounds of the sweep (c=1, c=16; no grounding; fresh requests each round)
against each in turn; the baseline (demo) last.

  fused     one python-backend model per modality: front end, encoder and Q-Former in one process
            (the CPU default since this change)
  ensemble  preprocess -> encoder -> Q-Former, a Triton model each (the layout GPU repositories keep)

    python benchmarks/results/fused-embeds-20261203/interleaved.py OUT.json [ROUNDS]
"""
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.interleave import compare_serve_variants
from bubogpt.defaults import default_model_dir
from bubogpt.grounding.pipeline import load_grounding
from bubogpt.weights import load_model
from export.repository import RepositorySettings, write_repository
from export.triton_install import model_env_dir

LAYOUTS = {"fused": True, "ensemble": False}

scratch = Path(tempfile.mkdtemp())
variants = {}
for name, fused in LAYOUTS.items():
    write_repository(scratch / name, load_model(default_model_dir()), grounding=load_grounding(default_model_dir()),
                     settings=RepositorySettings(execution_env=str(model_env_dir()), fused_embeds=fused))
    variants[name] = ["--model-repository", str(scratch / name)]
try:
    compare_serve_variants(variants, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4, {"layouts": LAYOUTS})
finally:
    shutil.rmtree(scratch, ignore_errors=True)
