"""Placement maps: which server runs which blocks, for split computing.

``"0-2=10.0.0.5:8001,3-4=gpu:8001"`` puts blocks 0..2 (inclusive) on an edge box
and 3..4 on a GPU server; a single index (``"4=host:port"``) is a range of one.
Blocks no range names run on the client's default server.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PlacementError(ValueError):
    """A placement string is malformed or its ranges overlap."""


@dataclass(frozen=True)
class BlockRange:
    """Blocks ``first..last`` (both inclusive) served at ``address``."""

    first: int
    last: int
    address: str

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.first <= index <= self.last


@dataclass(frozen=True)
class Segment:
    """Consecutive blocks ``[start, stop)`` that run on one address."""

    start: int
    stop: int
    address: str


@dataclass(frozen=True)
class Placement:
    """Ordered, non-overlapping block ranges mapped to server addresses."""

    ranges: tuple[BlockRange, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> Placement:
        """Parse ``"A-B=host:port,C=host:port,..."``; PlacementError on bad syntax or overlap."""
        ranges: list[BlockRange] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            span, sep, address = part.partition("=")
            if not sep or not address.strip():
                raise PlacementError(f"placement entry {part!r} is not RANGE=HOST:PORT")
            first_text, dash, last_text = span.strip().partition("-")
            try:
                first = int(first_text)
                last = int(last_text) if dash else first
            except ValueError:
                raise PlacementError(f"placement range {span!r} is not N or N-M") from None
            if first < 0 or last < first:
                raise PlacementError(f"placement range {span!r} is empty or negative")
            ranges.append(BlockRange(first, last, address.strip()))
        ranges.sort(key=lambda r: r.first)
        for before, after in zip(ranges, ranges[1:], strict=False):
            if after.first <= before.last:
                raise PlacementError(
                    f"placement ranges {before.first}-{before.last} and {after.first}-{after.last} overlap"
                )
        return cls(tuple(ranges))

    def address_for(self, index: int, default: str) -> str:
        """The address that serves block ``index`` (``default`` when no range names it)."""
        for block_range in self.ranges:
            if index in block_range:
                return block_range.address
        return default

    def segments(self, start: int, stop: int, default: str) -> list[Segment]:
        """Split blocks ``[start, stop)`` into maximal runs that share an address."""
        segments: list[Segment] = []
        for index in range(start, stop):
            address = self.address_for(index, default)
            if segments and segments[-1].address == address:
                segments[-1] = Segment(segments[-1].start, index + 1, address)
            else:
                segments.append(Segment(index, index + 1, address))
        return segments

    def __str__(self) -> str:
        return ",".join(
            f"{r.first}={r.address}" if r.first == r.last else f"{r.first}-{r.last}={r.address}"
            for r in self.ranges
        )
