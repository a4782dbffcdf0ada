"""Generates the Python gRPC stubs from bubo/v1/bubo.proto with grpcio-tools (the build step)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "bubo" / "v1" / "bubo.proto"
OUT = HERE / "_generated"


def build() -> Path:
    import grpc_tools
    from grpc_tools import protoc

    (OUT / "bubo" / "v1").mkdir(parents=True, exist_ok=True)
    for package in (OUT / "bubo", OUT / "bubo" / "v1"):
        (package / "__init__.py").touch()
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    code = protoc.main([
        "grpc_tools.protoc", f"-I{HERE}", f"-I{include}", f"--python_out={OUT}", f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}", str(PROTO.relative_to(HERE)),
    ])
    if code != 0:
        raise RuntimeError(f"protoc failed with code {code}")
    return OUT


if __name__ == "__main__":
    print(f"generated stubs in {build()}")
    sys.exit(0)
