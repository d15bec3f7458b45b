"""Keep freed heap memory in the process: large tensors otherwise cost page faults on every request.

glibc's malloc serves blocks over 128 KiB with fresh ``mmap`` s and gives the top of
each heap back to the kernel once 128 KiB of it is free. A server that receives,
runs and answers megabyte tensors then pays for new zeroed pages on every
request: measured on ``digits_cnn.00_stem`` at batch 64 (256 KiB in, 1 MiB out),
~1,250 minor page faults and ~3 ms of kernel time per request, two thirds of the
server's CPU (docs/BENCHMARKS.md, "Performance levers (measured)"). Raising both
thresholds lets the next request reuse the same pages; the resident size then
follows the largest working set instead of shrinking after each request.

Only glibc is tuned; an explicit ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
in the environment (glibc's own knobs) wins and leaves this alone.

What is kept is bounded, though: gRPC reads a whole message before refusing it as
too large (grpc/grpc#43012), and what it freed would otherwise stay resident for
good. ``start_janitor`` gives free pages back (``malloc_trim``) whenever the
resident size passes the size at start-up plus a budget that the served models'
working set stays under, so normal traffic keeps its pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# One heap for every thread: free memory in glibc's per-thread arenas is not given back by
# malloc_trim (measured: 150 MB of a batch-64 ResNet-50 run stayed behind in them), and this server
# has a handful of threads, not the hundreds per-thread arenas are for.
ARENA_MAX = 1
# Blocks up to this size come from the heap (glibc's largest allowed mmap threshold on 64-bit).
MMAP_THRESHOLD = 32 << 20
# Free memory at a heap's top is returned to the kernel only past this size.
TRIM_THRESHOLD = 256 << 20


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and keep one arena for this process; True if it did.

    Does nothing (False) outside glibc or when the environment sets any of these.
    """
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = all(libc.mallopt(parameter, value) == 1 for parameter, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENA_MAX)))
    except (OSError, AttributeError):
        done = False
    if not done:
        log.warning("could not raise glibc's malloc thresholds; large tensors will cost page faults")
    return done


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none."""
    libc = _libc()
    return getattr(libc, "malloc_trim", None) if libc is not None else None


def give_back() -> bool:
    """Return free heap pages to the system now (``malloc_trim``); False outside glibc.

    For memory a one-off step freed, such as loading (the chains' probes, server/chains.py): the
    janitor takes the size it first sees as the server's idle size and never trims below it.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# How often the janitor looks, and how long a server must be idle before it gives back what a load left:
# one second is far longer than any gap between a busy client's requests, and short enough that an
# idle server holds its idle size (docs/BENCHMARKS.md, "Memory"). A look costs one read of /proc.
JANITOR_EVERY_S = 1.0
# An idle server is trimmed again only once it has grown this much since its last idle trim.
_REGROWN = 4 << 20


class TrimPolicy:
    """When the janitor gives free heap memory back, from the resident size it reads each period.

    - Under load, past ``base`` (the size at start) plus ``budget`` bytes; a trim that cannot get back
      under that (the load holds the memory) raises the mark, so the next period does not trim for
      nothing.
    - Once idle, past what the last idle trim left (at first ``base``) plus ``_REGROWN``: memory a load
      needed returns after it, and an idle server is not trimmed again for nothing. The idle mark used
      to rise with a trim under load, so an idle worker then kept what that load had freed.
    """

    def __init__(self, base: int, budget: int) -> None:
        self.base = base
        self.budget = budget
        self.loaded_mark = base  # under load: what the last trim could not give back
        self.settled = base  # what the last idle trim left

    def should_trim(self, resident: int, idle: bool) -> bool:
        """Whether to trim now, at ``resident`` bytes, idle or not."""
        if resident > self.loaded_mark + self.budget:
            return True
        return idle and resident > self.settled + _REGROWN

    def trimmed(self, after: int, idle: bool) -> None:
        """Record what a trim left (``after`` bytes resident)."""
        if idle:
            self.settled = after
            self.loaded_mark = max(self.base, after)
        else:
            self.loaded_mark = max(self.loaded_mark, after)


def start_janitor(budget_bytes: int, every_s: float = JANITOR_EVERY_S,
                  idle_s: Callable[[], float] | None = None) -> bool:
    """Every ``every_s`` seconds, give free heap pages back (``malloc_trim``) when TrimPolicy says so;
    idle means no request for ``every_s`` (``idle_s``: seconds since the last one).
    A daemon thread; False (nothing started) outside glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    policy = TrimPolicy(resident_bytes(), budget_bytes)

    def watch() -> None:
        while True:
            time.sleep(every_s)
            before = resident_bytes()
            idle = idle_s is not None and idle_s() >= every_s
            if policy.should_trim(before, idle):
                trim(0)
                after = resident_bytes()
                policy.trimmed(after, idle)
                log.info("gave free memory back", extra={"fields": {
                    "rss_mib_before": before >> 20, "rss_mib_after": after >> 20, "idle": idle,
                    "budget_mib": budget_bytes >> 20}})

    threading.Thread(target=watch, name="malloc-janitor", daemon=True).start()
    return True
