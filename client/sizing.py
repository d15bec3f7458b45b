"""How many rows go in one request: the model's fixed batch, or what fits the message limit.

A 224x224 ResNet's stem answers 3.2 MB per image: 64 images would be a 205 MB
message, past the server's and gRPC's limits, found out only after the server
computed it. The client therefore sizes each request from the tensors' bytes per
row and the smaller of its own and the server's message limit (the server
advertises its limit in ListBlocks), leaving room for the message's own framing.
"""

from __future__ import annotations

from collections.abc import Iterable

# Names, shapes and ids a message carries besides its tensor bytes; matches the server's allowance.
MESSAGE_OVERHEAD_BYTES = 64 * 1024


def rows_per_request(
    batch_size: int,
    limit: int,
    request_row_bytes: int,
    answer_row_bytes: int | None,
    fixed_batch: int | None = None,
) -> int:
    """Rows per request: ``fixed_batch`` when the model takes only that many, else at most ``batch_size``
    (<= 0: no cap) rows such that neither the request nor the answer exceeds ``limit`` bytes; at least 1."""
    if fixed_batch is not None:
        return fixed_batch
    per_row = max(request_row_bytes, answer_row_bytes or 0)
    rows = batch_size if batch_size > 0 else 1 << 31
    if per_row > 0 and limit > 0:
        rows = min(rows, (limit - MESSAGE_OVERHEAD_BYTES) // per_row)
    return max(1, rows)


def total_row_bytes(sizes: Iterable[int | None]) -> int | None:
    """The sum of per-row sizes; None when one is unknown."""
    total = 0
    for size in sizes:
        if size is None:
            return None
        total += size
    return total
