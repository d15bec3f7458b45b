"""The link between the near and the far endpoint: a rate and a round-trip time, and what a transfer costs.

``Link.parse("20Mbit/s,40ms")``: 20 megabits per second each way, 40 ms round trip
(what ``ping`` reports; an emulator delays each direction by half). Rates take
``bit/s``, ``kbit/s``, ``Mbit/s``, ``Gbit/s`` (also ``bps``, ``kbps``, ``Mbps``,
``Gbps``) or bytes as ``B/s``, ``kB/s``, ``MB/s``, ``GB/s``, in SI units (k = 1000), spelled
exactly so (``b`` is a bit, ``B`` a byte);
times take ``us``, ``ms`` or ``s``.

The model is the one Neurosurgeon used: one request and its answer cost one round
trip plus their bytes at the link's rate. TCP's slow start and losses are not
modelled (docs/split-computing.md says when that matters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Exact spellings: "b" is a bit and "B" a byte, so "Mb/s" is refused as ambiguous.
RATE_UNITS: dict[str, float] = {
    "bit/s": 1.0, "kbit/s": 1e3, "Mbit/s": 1e6, "Gbit/s": 1e9,
    "bps": 1.0, "kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9,
    "B/s": 8.0, "kB/s": 8e3, "MB/s": 8e6, "GB/s": 8e9,
}
TIME_UNITS: dict[str, float] = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z/]*)\s*$")
EXAMPLE = "20Mbit/s,40ms"


class LinkError(ValueError):
    """A link string that does not parse; the message names what was expected and what came."""


@dataclass(frozen=True)
class Link:
    """``bits_per_second`` each way and ``rtt_seconds`` for one request and its answer."""

    bits_per_second: float
    rtt_seconds: float

    @classmethod
    def parse(cls, text: str) -> Link:
        """``"RATE,RTT"`` such as ``20Mbit/s,40ms``; LinkError (one line) otherwise."""
        shown = text if len(text) <= 60 else text[:57] + "..."
        parts = text.split(",")
        if len(parts) != 2:
            raise LinkError(f"link expects RATE,RTT such as {EXAMPLE}, got {shown!r}")
        rate = _quantity(parts[0], RATE_UNITS, "rate", shown)
        rtt = _quantity(parts[1], TIME_UNITS, "round-trip time", shown)
        if rate <= 0:
            raise LinkError(f"link rate must be > 0, got {shown!r}")
        return cls(rate, rtt)

    def transfer_seconds(self, request_bytes: int, answer_bytes: int) -> float:
        """One round trip plus the bytes both ways at the link's rate."""
        return self.rtt_seconds + (request_bytes + answer_bytes) * 8 / self.bits_per_second

    def __str__(self) -> str:
        return f"{_si(self.bits_per_second)}bit/s,{self.rtt_seconds * 1e3:g}ms"


def _quantity(text: str, units: dict[str, float], what: str, shown: str) -> float:
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2) if match else ""
    if match is None or unit not in units:
        known = ", ".join(u for u in units if "/" in u or what != "rate")
        raise LinkError(f"link {what} expects a number and one of {known}, got {text.strip()[:30]!r} in {shown!r}")
    return float(match.group(1)) * units[unit]


def _si(value: float) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:g}{prefix}"
    return f"{value:g}"
