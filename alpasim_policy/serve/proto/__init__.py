"""AlpaSim's egodriver wire contract: our .proto files and their generated stubs.

``from alpasim_policy.serve.proto import common_pb2, egodriver_pb2, egodriver_pb2_grpc, sensorsim_pb2``.
Regenerate with ``python -m alpasim_policy.serve.gen_proto`` (see ../README.md).
"""

from . import common_pb2, egodriver_pb2, egodriver_pb2_grpc, sensorsim_pb2
from ._pool import POOL

__all__ = ["POOL", "common_pb2", "egodriver_pb2", "egodriver_pb2_grpc", "sensorsim_pb2"]
