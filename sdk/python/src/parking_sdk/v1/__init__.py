"""Generated from proto/parking/v1: messages (*_pb2), stubs and servicers (*_pb2_grpc)."""
