"""Regenerates the committed gRPC stubs (bubo_pb2.py, bubo_pb2.pyi, bubo_pb2_grpc.py) from bubo.proto.

    python -m serving.proto.build      # after editing serving/proto/bubo.proto

tests/test_proto.py fails while the committed stubs differ from what this writes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the directory that holds the `serving` package
PROTO = HERE / "bubo.proto"
OUTPUTS = ("bubo_pb2.py", "bubo_pb2.pyi", "bubo_pb2_grpc.py")


def generate(out: Path) -> dict[str, str]:
    """Runs protoc on bubo.proto into `out`; returns {file name: text}."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                        f"--grpc_python_out={out}", str(PROTO.relative_to(ROOT))])
    if code != 0:
        raise RuntimeError(f"protoc failed with code {code}")
    return {name: (out / "serving" / "proto" / name).read_text() for name in OUTPUTS}


def build() -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generate(Path(tmp)).items():
            (HERE / name).write_text(text)
    return HERE


if __name__ == "__main__":
    print(f"regenerated the gRPC stubs in {build()}")
    sys.exit(0)
