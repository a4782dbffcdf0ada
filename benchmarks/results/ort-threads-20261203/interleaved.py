"""ONNX Runtime thread settings in the python-backend models, interleaved: one `bubo serve` per setting, all
started at once, then rounds of the sweep (c=1, c=16; no grounding; fresh requests each round) against each in turn, so that the
machine's drift between minutes hits every setting alike; the baseline (demo) last.

    python benchmarks/results/ort-threads-20261203/interleaved.py OUT.json [ROUNDS]

Measured on the three-model ensemble layout (the CPU default at the time; since fused-embeds-20261203 it is
`--layout ensemble`): every network an `onnx_runtime` model whose bubo.json carries the setting.
"""
import json
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

VARIANTS = {  # every key explicit: the repository's own defaults do not leak into a variant
    "pool per core, spinning": {"intra_op_threads": 0, "allow_spinning": True},
    "pool per core, no spinning": {"intra_op_threads": 0, "allow_spinning": False},
    "one thread": {"intra_op_threads": 1, "allow_spinning": False},
}

scratch = Path(tempfile.mkdtemp())
base = scratch / "base"
write_repository(base, load_model(default_model_dir()), grounding=load_grounding(default_model_dir()),
                 settings=RepositorySettings(execution_env=str(model_env_dir()), fused_embeds=False))
arguments = {}
for name, change in VARIANTS.items():
    copy = scratch / name.replace(" ", "-").replace(",", "")
    shutil.copytree(base, copy)
    for settings_path in copy.glob("*/1/bubo.json"):
        if (settings_path.parent / "model.onnx").is_file():  # an ONNX Runtime model
            settings_path.write_text(json.dumps({**json.loads(settings_path.read_text()), **change}))
    arguments[name] = ["--model-repository", str(copy)]
try:
    compare_serve_variants(arguments, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3, {"variants": VARIANTS})
finally:
    shutil.rmtree(scratch, ignore_errors=True)
