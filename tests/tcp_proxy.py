"""A loopback TCP proxy for tests that need a connection to go quiet without closing."""

import socket
import threading


class FreezingProxy:
    """A TCP proxy to Redis that can stop passing on the connections that sent `marker`.

    Once frozen, such a connection gets no more bytes either way and is never closed: with
    BRPOP, a worker's consumer waits for nothing while publishes and the cache still work
    (a worker alive but no longer consuming); with SUBSCRIBE, a half-open subscriber.
    """

    def __init__(self, target_port: int, marker: bytes = b"BRPOP"):
        self.target_port = target_port
        self.marker = marker
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, server]
            consuming = threading.Event()
            threading.Thread(
                target=self._pump, args=(client, server, consuming), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, consuming), daemon=True
            ).start()

    def _pump(self, source, destination, consuming):
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.marker in data.upper():
                consuming.set()
            if consuming.is_set() and self.frozen.is_set():
                continue  # swallowed: the consumer's read never returns
            try:
                destination.sendall(data)
            except OSError:
                return

    def close(self):
        for sock in self.sockets:
            sock.close()
