"""The `bubo.v1` gRPC API: serving/proto/bubo.proto and the stubs generated from it.

    from serving.proto import bubo_pb2, bubo_pb2_grpc

The stubs are committed (regenerate them with `python -m serving.proto.build` after editing the
.proto; tests/test_proto.py checks that they match it).
"""
