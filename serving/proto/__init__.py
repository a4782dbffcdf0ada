"""The `bubo.v1` gRPC API. Stubs are generated from bubo/v1/bubo.proto by `python -m serving.proto.build`
(scripts/setup.sh runs it) and are never edited by hand.

    from serving.proto import bubo_pb2, bubo_pb2_grpc
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

_GENERATED = Path(__file__).resolve().parent / "_generated"


def _load(name: str):
    if not (_GENERATED / "bubo" / "v1" / f"{name}.py").is_file():
        raise ImportError(f"generated gRPC stubs are missing: run `python -m serving.proto.build` ({_GENERATED})")
    # the generated modules import each other as `bubo.v1.bubo_pb2`, relative to _generated
    if str(_GENERATED) not in sys.path:
        sys.path.insert(0, str(_GENERATED))
    return importlib.import_module(f"bubo.v1.{name}")


def __getattr__(name: str):
    if name in ("bubo_pb2", "bubo_pb2_grpc"):
        module = _load(name)
        globals()[name] = module
        return module
    raise AttributeError(name)
