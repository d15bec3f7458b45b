"""The gRPC message limit, derived from what the served models can need.

gRPC reads a whole message before refusing it as too large, and keeps the
answers a slow client has not read yet; both cost memory up to the limit per
message. So the default limit is not a round large number but the largest
tensor any served name takes or gives at its ``max_batch_size``, plus headroom
for typed contents and the protobuf envelope (docs/server.md, "Limits"). The
server computes it once, after loading, and keeps it on the DataPlane
(``DataPlane.max_message_bytes``), where ListBlocks can report it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

from layerserve.proto.tensors import DATATYPES, TensorSpec

from .repository import Repository

log = logging.getLogger(__name__)

MIB = 1 << 20
# Never below gRPC's own default receive limit: metadata answers (ListBlocks, RepositoryIndex) fit.
FLOOR = 4 * MIB
# When a served tensor has no bound (a free non-batch dimension, or no max_batch_size): the old default.
UNBOUNDED = 64 * MIB
# gRPC's limits are signed 32-bit.
CEILING = (1 << 31) - 1
# Typed int64 contents take up to 10 varint bytes for 8 raw ones; the rest is the envelope.
HEADROOM = 1.25
ENVELOPE = 64 * 1024


def tensor_bytes(spec: TensorSpec, rows: int) -> int | None:
    """Bytes of ``spec`` with ``rows`` in its leading -1; None when another dimension is free or the
    datatype has no fixed size."""
    dtype = DATATYPES.get(spec.datatype)
    if dtype is None or any(dim < 0 for dim in spec.shape[1:]):
        return None
    dims = [rows if spec.shape[:1] == (-1,) else spec.shape[0], *spec.shape[1:]] if spec.shape else []
    return math.prod(dims) * dtype.itemsize


def _tensors(repository: Repository) -> Iterator[tuple[str, TensorSpec, int]]:
    for model in repository.versions():
        for endpoint in model.endpoints.values():
            rows = endpoint.batching.max_batch_size if endpoint.batched else 1
            for spec in (*endpoint.inputs, *endpoint.outputs):
                yield endpoint.name, spec, rows


def message_limit(repository: Repository) -> int:
    """The default ``max_message_bytes`` for ``repository``: largest tensor x HEADROOM + ENVELOPE,
    rounded up to a MiB, at least FLOOR; UNBOUNDED when some tensor's size has no bound."""
    largest = 0
    for name, spec, rows in _tensors(repository):
        size = tensor_bytes(spec, rows) if rows else None
        if size is None:
            log.warning("a served tensor has no size bound; message limit %d bytes", UNBOUNDED,
                        extra={"fields": {"model": name, "tensor": spec.name, "spec": str(spec), "max_batch_size": rows}})
            return UNBOUNDED
        largest = max(largest, size)
    wanted = math.ceil((largest * HEADROOM + ENVELOPE) / MIB) * MIB
    return min(CEILING, max(FLOOR, wanted))


def heap_budget(max_message_bytes: int) -> int:
    """Resident memory over the start-up size that the allocator may keep (server/allocator.py's
    janitor): room for many messages at the limit in flight, at least 64 MiB."""
    return max(64 * MIB, 8 * max_message_bytes)
