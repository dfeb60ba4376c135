"""The private protobuf descriptor pool our generated stubs register into.

Why not the default pool: carla-driver-interface (and AlpaSim's own alpasim_grpc)
register the same full names (``egodriver.DriveRequest`` ...) from their own files, and
the default pool refuses a second definition of a name, so importing both in one
process would fail. Messages built from either pool serialise to identical bytes.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
