"""The link emulator's clock (bench/linkemu.py): chunks leave back to back at the link's rate, never early."""

from __future__ import annotations

import pytest

from bench.linkemu import MAX_CHUNK, MIN_CHUNK, TokenBucket, chunk_bytes
from layerserve.client import Link


def test_chunks_leave_back_to_back_at_the_rate() -> None:
    bucket = TokenBucket(1000.0)  # bytes per second
    assert bucket.departure(0.0, 500) == pytest.approx(0.5)  # an idle link saves no burst
    assert bucket.departure(0.1, 500) == pytest.approx(1.0)  # queued behind the first
    assert bucket.departure(5.0, 100) == pytest.approx(5.1)  # idle again: from when it is offered


@pytest.mark.parametrize(("link", "size"), [("1Mbit/s,50ms", MIN_CHUNK), ("20Mbit/s,20ms", MIN_CHUNK),
                                            ("1Gbit/s,1ms", 250_000), ("10Gbit/s,1ms", MAX_CHUNK)])
def test_reads_grow_with_the_rate(link: str, size: int) -> None:
    assert chunk_bytes(Link.parse(link)) == size
