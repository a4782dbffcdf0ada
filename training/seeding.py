"""Deterministic seeds and the process RNG states that a checkpoint carries.

torch is imported inside the functions that use it: the synthetic world (training.world, numpy and PIL
only, so corpus generation starts fast) takes `derive_seed` from here.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts; the same on every machine and run (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as tensors/plain data (loadable weights_only)."""
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": _python_state_to_plain(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(_python_state_from_plain(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state):
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _python_state_from_plain(plain):
    return (plain["version"], tuple(plain["internal"]), plain["gauss"])
