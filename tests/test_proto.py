"""The committed gRPC stubs match serving/proto/bubo.proto (regenerate: `python -m serving.proto.build`)."""

import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

from serving.proto import bubo_pb2, bubo_pb2_grpc
from serving.proto.build import PROTO, ROOT


def test_committed_stubs_match_the_proto():
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptor.pb"
        assert protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", str(PROTO.relative_to(ROOT))]) == 0
        compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(bubo_pb2.DESCRIPTOR.serialized_pb)
    for message in compiled.message_type:  # protoc fills in json names; the generated module does not keep them
        for field in message.field:
            field.ClearField("json_name")
    assert committed == compiled, "serving/proto/bubo.proto changed: run `python -m serving.proto.build`"
    service = bubo_pb2.DESCRIPTOR.services_by_name["Bubo"]
    assert service.full_name == "bubo.v1.Bubo" and {m.name for m in service.methods} == {"Chat", "Ground"}
    assert hasattr(bubo_pb2_grpc, "BuboStub") and hasattr(bubo_pb2_grpc, "add_BuboServicer_to_server")
