"""Placement maps: which server runs which blocks, for split computing.

``"0-2=10.0.0.5:8001,3-4=gpu:8001"`` puts blocks 0..2 (inclusive) on an edge box
and 3..4 on a GPU server; a single index (``"4=host:port"``) is a range of one.
Blocks no range names run on the client's default server. ``@fp16`` or ``@int8`` after
an address (``"3-4=gpu:8001@int8"``) sends every tensor the client hands that range's
server in that wire encoding (proto/encodings.py): how a split-computing plan
compresses its cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from layerserve.proto.encodings import ENCODINGS


class PlacementError(ValueError):
    """A placement string is malformed or its ranges overlap."""


@dataclass(frozen=True)
class BlockRange:
    """Blocks ``first..last`` (both inclusive) served at ``address``; ``encoding``: how the tensors
    the client sends there travel."""

    first: int
    last: int
    address: str
    encoding: str = "fp32"

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.first <= index <= self.last


@dataclass(frozen=True)
class Segment:
    """Consecutive blocks ``[start, stop)`` that run on one address, their input sent as ``encoding``."""

    start: int
    stop: int
    address: str
    encoding: str = "fp32"


@dataclass(frozen=True)
class Placement:
    """Ordered, non-overlapping block ranges mapped to server addresses."""

    ranges: tuple[BlockRange, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> Placement:
        """Parse ``"A-B=host:port[@encoding],C=host:port,..."``; PlacementError on bad syntax, an unknown
        encoding or overlap."""
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
            address, at, encoding = address.strip().partition("@")
            encoding = encoding.strip() if at else "fp32"
            if encoding not in ENCODINGS:
                raise PlacementError(f"placement entry {part!r}: encoding expects one of {', '.join(ENCODINGS)}, "
                                     f"got {encoding!r}")
            ranges.append(BlockRange(first, last, address.strip(), encoding))
        ranges.sort(key=lambda r: r.first)
        for before, after in zip(ranges, ranges[1:], strict=False):
            if after.first <= before.last:
                raise PlacementError(
                    f"placement ranges {before.first}-{before.last} and {after.first}-{after.last} overlap"
                )
        return cls(tuple(ranges))

    def address_for(self, index: int, default: str) -> str:
        """The address that serves block ``index`` (``default`` when no range names it)."""
        found = self.range_for(index)
        return found.address if found else default

    def range_for(self, index: int) -> BlockRange | None:
        """The range naming block ``index``, None when none does."""
        return next((r for r in self.ranges if index in r), None)

    def encoding_for(self, index: int) -> str:
        """How a tensor the client sends to block ``index`` travels: its range's encoding (fp32 when unnamed)."""
        found = self.range_for(index)
        return found.encoding if found is not None else "fp32"

    def segments(self, start: int, stop: int, default: str) -> list[Segment]:
        """Split blocks ``[start, stop)`` into maximal runs that share an address."""
        segments: list[Segment] = []
        for index in range(start, stop):
            address = self.address_for(index, default)
            if segments and segments[-1].address == address:
                last = segments[-1]
                segments[-1] = Segment(last.start, index + 1, address, last.encoding)
            else:
                segments.append(Segment(index, index + 1, address, self.encoding_for(index)))
        return segments

    def __str__(self) -> str:
        return ",".join(
            (f"{r.first}" if r.first == r.last else f"{r.first}-{r.last}")
            + f"={r.address}" + ("" if r.encoding == "fp32" else f"@{r.encoding}")
            for r in self.ranges
        )
