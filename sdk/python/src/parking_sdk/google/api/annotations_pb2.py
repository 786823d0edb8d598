"""google.api's annotations_pb2: googleapis-common-protos's module when it is installed
(protobuf's descriptor pool takes one google/api file of a name, so a second copy would
clash), else the copy generated from proto/google/api. Written by scripts/gen-sdk-python.sh."""

try:
    from google.api.annotations_pb2 import *  # noqa: F403
except ImportError:
    from parking_sdk.google.api._embedded.annotations_pb2 import *  # noqa: F403
