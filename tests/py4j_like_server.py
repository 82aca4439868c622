"""A TCP server that answers like PyFlink's py4j gateway (`!xn`), not HTTP: what CI found on a component's port."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def py4j_like_server(connections: int = 1) -> Iterator[str]:
    """Yields `127.0.0.1:port` of a server that answers each of `connections` requests with py4j's error reply."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer() -> None:
            for _ in range(connections):
                connection, _ = server.accept()
                with connection:
                    connection.recv(4096)
                    connection.sendall(b"!xn\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        yield f"127.0.0.1:{server.getsockname()[1]}"
        thread.join(timeout=5)
