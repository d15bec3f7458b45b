"""The descriptor pool our generated stubs register in.

Our ``grpc_service.proto`` declares the standard ``inference`` package, exactly
as Triton's does (the package is part of every RPC path, so it must). Two files
declaring the same symbols cannot share protobuf's default pool, and tritonclient
registers its own copy there; so our stubs use this private pool, and a process
can import both (our tests and benchmarks do). Server reflection is given this
pool explicitly.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
