"""A slow link on loopback: a TCP proxy that paces each direction with a token bucket and delays it.

    python -m bench.linkemu --target 127.0.0.1:8001 --link 20Mbit/s,40ms --port 9001

Why a proxy: this machine's kernel has no ``sch_netem``, so ``tc`` cannot add delay
(``tbf``/``htb`` can pace a veth between network namespaces, but not delay it), and CI
runners have no root. The proxy keeps the real network stack on both sides (the client
and the server speak TCP and HTTP/2 to real sockets, gRPC's flow control included) and
puts the link between them in userspace, on asyncio:

- each direction is a token bucket of ``rate`` that holds no burst: chunks (reads of up to
  16 KiB, more at high rates so that the proxy's own CPU is not the bottleneck) leave back
  to back, each once the link has clocked out its last byte;
- a chunk arrives ``rtt / 2`` after it left, so a request and its answer pay one RTT;
- at most ``QUEUE_CHUNKS`` chunks wait per direction; beyond that the proxy stops reading
  and TCP's own backpressure reaches the sender, as a full router queue would.

Not modelled: losses, jitter, TCP slow start over the slow hop (the proxy's loopback
legs never see the link's RTT). asyncio's timers wake up to ~1 ms late, which matters
only for sub-millisecond delays. :class:`LinkEmulator` runs the proxy as a child
process (so its CPU time is not the client's GIL) and counts the bytes it carried.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from layerserve.client.link import Link
from layerserve.server.launcher import free_port

QUEUE_CHUNKS = 256
MIN_CHUNK = 16 * 1024
MAX_CHUNK = 256 * 1024


def chunk_bytes(link: Link) -> int:
    """Bytes read at once: 2 ms of the link's rate, within [16 KiB, 256 KiB]."""
    return int(min(MAX_CHUNK, max(MIN_CHUNK, link.bits_per_second / 8 * 0.002)))


class TokenBucket:
    """Departure times on a link of ``bytes_per_second``: a token bucket that holds no burst.

    A chunk has left once the link has clocked out its last byte, after everything offered
    before it; an idle link does not save up tokens, so a lone request pays its full size at
    the rate, as it would on a real wire.
    """

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self.free_at = 0.0

    def departure(self, now: float, size: int) -> float:
        """When a chunk of ``size`` bytes offered at ``now`` has left."""
        self.free_at = max(now, self.free_at) + size / self.rate
        return self.free_at


async def _direction(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link,
                     counter: list[int]) -> None:
    """Carry one direction: read, stamp each chunk with its arrival time, write it then."""
    loop = asyncio.get_running_loop()
    size = chunk_bytes(link)
    bucket = TokenBucket(link.bits_per_second / 8)
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
    one_way = link.rtt_seconds / 2

    async def receive() -> None:
        try:
            while data := await reader.read(size):
                counter[0] += len(data)
                await queue.put((bucket.departure(loop.time(), len(data)) + one_way, data))
        finally:
            await queue.put(None)

    async def deliver() -> None:
        while (item := await queue.get()) is not None:
            arrival, data = item
            delay = arrival - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    await asyncio.gather(receive(), deliver())


async def serve(target: tuple[str, int], link: Link, port: int, host: str = "127.0.0.1",
                ready: Path | None = None) -> None:
    """Accept on ``host:port`` and carry every connection to ``target`` over ``link``, until cancelled.

    Every 0.1 s (and once ready) ``ready`` gets the bytes carried so far: ``up down``.
    """
    counters = ([0], [0])  # client -> target, target -> client

    async def connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_direction(client_reader, server_writer, link, counters[0]),
                                 _direction(server_reader, client_writer, link, counters[1]))
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in (server_writer, client_writer):
                writer.close()

    server = await asyncio.start_server(connection, host, port)
    async with server:
        while True:
            if ready is not None:  # written aside and renamed: a reader never sees a half-written file
                partial = ready.with_name(ready.name + ".partial")
                partial.write_text(f"{counters[0][0]} {counters[1][0]}\n")
                os.replace(partial, ready)
            await asyncio.sleep(0.1)


class LinkEmulator:
    """``with LinkEmulator(server.address, link) as emulated: emulated.address`` — a proxy child process.

    ``carried()`` returns the bytes carried each way so far (updated every 0.1 s).
    """

    def __init__(self, target: str, link: Link | str, host: str = "127.0.0.1") -> None:
        self.target = target
        self.link = link if isinstance(link, Link) else Link.parse(link)
        self.port = free_port(host)
        self.address = f"{host}:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._ready: Path | None = None

    def start(self, timeout: float = 10.0) -> LinkEmulator:
        """Start the proxy and wait until it writes its ready file; RuntimeError if it does not."""
        import tempfile

        handle, name = tempfile.mkstemp(prefix="linkemu-")
        os.close(handle)
        self._ready = Path(name)
        self._ready.unlink()
        command = [sys.executable, "-m", "bench.linkemu", "--target", self.target, "--link", str(self.link),
                   "--port", str(self.port), "--ready", str(self._ready)]
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"link emulator did not start: {self.process.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        return self

    def carried(self) -> tuple[int, int]:
        """Bytes carried (towards the target, back from it) as of the last update (every 0.1 s)."""
        if self._ready is None or not self._ready.exists():
            return 0, 0
        up, down = self._ready.read_text().split()
        return int(up), int(down)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._ready is not None:
            self._ready.unlink(missing_ok=True)
            self._ready.with_name(self._ready.name + ".partial").unlink(missing_ok=True)

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to carry connections to")
    parser.add_argument("--link", required=True, help="RATE,RTT such as 20Mbit/s,40ms")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--ready", type=Path, help="file to write once listening (then byte counts)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    link = Link.parse(args.link)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve((host, int(port)), link, args.port, ready=args.ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
