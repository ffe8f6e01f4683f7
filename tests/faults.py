"""Real network faults for tests: a TCP proxy in front of a real server that a test can cut.

A dependency going away (Postgres stopped, a registry host unreachable) looks the same to
K2 whether the server died or the path to it did: connections are reset and new ones are
refused. Stopping the machine's shared Postgres would fail every other test using it, so
tests put this proxy between K2 and the server and cut it instead. Nothing is simulated:
K2's drivers talk to the real server through a real socket.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from tests.helpers import free_ports


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``; :meth:`cut` drops every connection and refuses
    new ones until :meth:`restore`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_ports(1)[0]
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._holder: socket.socket | None = None  # while cut: bound, not listening (connections are refused)
        self._open: set[socket.socket] = set()
        self.restore()

    @classmethod
    def for_url(cls, url: str) -> tuple[TcpProxy, str]:
        """A proxy to the host and port of ``url`` (a SQLAlchemy or HTTP URL), and ``url`` through it."""
        parts = urlsplit(url)
        assert parts.hostname and parts.port, f"{url} names no host and port"
        proxy = cls(parts.hostname, parts.port)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
        return proxy, urlunsplit(parts._replace(netloc=netloc))

    def restore(self) -> None:
        """Listen again (the same port) and forward new connections."""
        with self._lock:
            if self._listener is not None:
                return
            if self._holder is not None:
                self._holder.close()
                self._holder = None
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="tcp-proxy").start()

    def cut(self) -> None:
        """Reset every open connection and refuse new ones (the server is 'down')."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._open = self._open, set()
            if listener is not None:
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)
                listener.close()
                # Keep the port: a socket bound but not listening makes the kernel refuse connections,
                # and no other socket (an outgoing connection's source port) can take it before restore.
                holder = socket.socket()
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                holder.bind(("127.0.0.1", self.port))
                self._holder = holder
        for conn in connections:  # their pumps end and close them
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        with self._lock:
            if self._holder is not None:
                self._holder.close()
                self._holder = None

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server is unreachable inside the block."""
        self.cut()
        try:
            yield
        finally:
            self.restore()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    server.close()
                    return
                self._open.update((client, server))
            pumps = [threading.Thread(target=self._pump, args=pair, daemon=True, name="tcp-pump")
                     for pair in ((client, server), (server, client))]  # fmt: skip
            for pump in pumps:
                pump.start()
            threading.Thread(target=self._close_after, args=(pumps, client, server), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:  # one side ended: end the other direction too
            for conn in (source, sink):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def _close_after(self, pumps: list[threading.Thread], *connections: socket.socket) -> None:
        """Close a connection's sockets once neither direction uses them (no descriptor closed under a recv)."""
        for pump in pumps:
            pump.join()
        with self._lock:
            self._open.difference_update(connections)
        for conn in connections:
            conn.close()
