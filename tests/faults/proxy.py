"""A TCP proxy a test controls, to make real network faults between two real processes.

    proxy = TcpProxy("127.0.0.1", 5432).start()   # forwards 127.0.0.1:proxy.port -> :5432
    proxy.refuse()          # existing connections cut, new ones refused (ECONNREFUSED)
    proxy.accept()          # listening again on the same port
    proxy.drop_responses()  # requests reach the server, its answers never come back

Plain threads, one pair per connection: the tests open tens of connections, not thousands.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = listen_port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._dropping = False
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        self.accept()
        return self

    def accept(self) -> None:
        """Listen (again, on the same port) and forward faithfully."""
        with self._lock:
            self._dropping = False
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self.port = listener.getsockname()[1]
            self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Cut every open connection and stop listening: the far side looks down."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in connections:
            _abort(conn)

    def drop_responses(self, on: bool = True) -> None:
        """Forward requests but swallow answers and then hang up: the server did the work,
        the client never learns it."""
        with self._lock:
            self._dropping = on

    def close(self) -> None:
        self.refuse()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # refused or closed
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _abort(client)
                continue
            server.settimeout(None)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is not listener:
                    _abort(client)
                    _abort(server)
                    return
                self._connections.update((client, server))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if answers and self._dropping:
                    break  # swallow the answer and hang up on the client
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(source)
                self._connections.discard(sink)
            _abort(source)
            _abort(sink)


def _abort(conn: socket.socket) -> None:
    """Close with a reset, as a dead peer would look. The shutdown wakes the other pump
    thread blocked in recv on the same socket (a bare close would not)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        conn.close()
