"""One server per port: refuse a port another process holds, and hold ours while workers start.

Workers share the port through SO_REUSEPORT, and the kernel lets any process of
the same user join such a group: a second server on the port would silently
take a share of the connections. So before binding, a server test-binds the
port with a plain socket (SO_REUSEADDR, no SO_REUSEPORT), which fails while
anything listens there, SO_REUSEPORT or not (``check_free``). A multi-worker
server then ``hold``s the port for its lifetime with a socket that has
SO_REUSEPORT but not SO_REUSEADDR and never listens: its own workers (same user,
SO_REUSEPORT) can still bind beside it, but another server's test-bind fails
even before the workers listen. What the kernel cannot stop is a program of the
same user that itself sets SO_REUSEPORT and does no such test.

The refusal names the process: listening sockets of the port from
/proc/net/tcp{,6}, matched by inode with /proc/<pid>/fd (Linux; processes of
other users cannot be read, and then the message says "another process").
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

_LISTEN = "0A"  # TCP state in /proc/net/tcp


class PortInUse(OSError):
    """The port is held by another process (errno EADDRINUSE); the message names it when it can."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EADDRINUSE, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _addresses(host: str, port: int) -> list[tuple[int, tuple]]:
    infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return list(dict.fromkeys((family, address) for family, _, _, _, address in infos))


def check_free(host: str, port: int, what: str = "port") -> None:
    """Raise PortInUse when some process listens on (or holds) ``host:port``; port 0 is always free.

    ``what`` names the port in the message (``HTTP port 8000 is in use by pid 4242``).
    """
    if port == 0:
        return
    for family, address in _addresses(host, port):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
                raise PortInUse(in_use_message(port, what)) from None


def hold(host: str, port: int, what: str = "port") -> tuple[int, list[socket.socket]]:
    """Bind ``host:port`` (0: a free port) so that only SO_REUSEPORT sockets of this user can join.

    Returns the port and the sockets; keep them open as long as the workers serve. Checks the
    port first (PortInUse; ``what`` names it in the message).
    """
    check_free(host, port, what)
    held: list[socket.socket] = []
    try:
        for family, address in _addresses(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address[:1] + (port,) + address[2:])
            port = port or sock.getsockname()[1]
    except OSError as error:
        for sock in held:
            sock.close()
        if error.errno == errno.EADDRINUSE:
            raise PortInUse(in_use_message(port, what)) from None
        raise
    return port, held


def in_use_message(port: int, what: str = "port") -> str:
    """``port 8001 is in use by pid 1234``, or ``by another process`` when no pid can be found."""
    pids = listeners(port)
    if not pids:
        return f"{what} {port} is in use by another process"
    if len(pids) == 1:
        return f"{what} {port} is in use by pid {pids[0]}"
    parents = {_parent(pid) for pid in pids}
    if len(parents) == 1 and None not in parents and 1 not in parents:
        children = ", ".join(map(str, pids))
        return f"{what} {port} is in use by pid {parents.pop()} (listening in its processes {children})"
    return f"{what} {port} is in use by pids {', '.join(map(str, pids))}"


def listeners(port: int) -> list[int]:
    """Pids of the processes with a listening TCP socket on ``port`` (those this user may inspect)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return []
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in targets for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
    return sorted(pids)


def _parent(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return None
