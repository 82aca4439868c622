"""Ports of the local stack's services: free ones picked safely, taken ones refused with the way out.

Never hands out a port from the kernel's ephemeral range when it can avoid it (see `free_port`).
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

from stack.settings import StackError

# Linux's default when /proc does not say (macOS hands out 49152-65535, above it).
_EPHEMERAL_DEFAULT = (32768, 60999)
_FREE_PORTS_FROM = 20000
_handed_out: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands out for bind(0) and outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, below the kernel's ephemeral range.

    A port from bind(0) is ephemeral: between the moment it is picked and the
    moment the component binds it, any process that binds port 0 or connects
    out may be given it. CI saw exactly that: the PyFlink JVM's py4j gateway
    took the port picked for the Flink dashboard and answered its probe with
    `!xn`. The kernel never hands out ports below the range on its own.
    """
    low, _ = ephemeral_port_range()
    below = range(_FREE_PORTS_FROM, max(_FREE_PORTS_FROM, low))
    for port in random.sample(below, k=min(200, len(below))):
        # Never the same port twice from one process: two picks before either is bound must differ.
        if port not in _handed_out and port_bindable(host, port) is None:
            _handed_out.add(port)
            return port
    # No room below the range (a tuned kernel): the kernel's pick, with the race above.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports (see `free_port`), none handed out before; all are marked taken.

    For a stream job on a local cluster: TaskManager i serves /metrics on the first port + i.
    """
    if count <= 1:
        return free_port(host)
    low, _ = ephemeral_port_range()
    starts = list(range(_FREE_PORTS_FROM, low - count))
    random.shuffle(starts)
    for start in starts[:200]:
        block = range(start, start + count)
        if all(port not in _handed_out and port_bindable(host, port) is None for port in block):
            _handed_out.update(block)
            return start
    raise StackError(f"found no {count} consecutive free ports below {low} on {host}")


def port_bindable(host: str, port: int) -> OSError | None:
    """None if a server could listen on host:port now, else the bind error.

    SO_REUSEADDR as every server of the stack sets it (Tansu via tokio, Valkey,
    uvicorn, the stream job's http.server): connections of a previous run that
    linger in TIME-WAIT (up to 60 s) do not stop a new listener, so they must
    not stop this check either; a socket that still listens does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as error:
            return error
    return None


def claim_port(host: str, port: int, what: str, flag: str) -> int:
    """Return `port` if it can be bound (or a free port for 0); else a StackError saying what to do."""
    if port == 0:
        return free_port(host)
    error = port_bindable(host, port)
    if error is not None:
        raise StackError(
            f"cannot start the {what}: {host}:{port} is already in use ({error.strerror}). "
            f"Stop whatever listens there (`freshrank down` if it is an old stack), "
            f"or pass {flag} PORT, or {flag} 0 for a free port."
        )
    return port


def split_address(address: str) -> tuple[str, int]:
    """Host and port of a local component's `host:port` address, as the stack writes them."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return host, int(port)


def wait_ports_free(addresses: list[str], timeout_s: float) -> list[str]:
    """Wait until a new server could listen on every host:port; returns those still taken at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        taken = [a for a in addresses if port_bindable(*split_address(a)) is not None]
        if not taken or time.monotonic() >= deadline:
            return taken
        time.sleep(0.1)
