"""Real mail-server faults on loopback for tests: a port where nothing listens (connection
refused), a server that accepts and never answers (a hang), and a small SMTP server that
refuses some recipients with 550, can be down (421) for some sessions, and keeps what it
accepted. And the retries queued for
the emails a fault held back, as the broker got them."""

import itertools
import json
import socket
import socketserver
import threading
from collections.abc import Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery import current_app
from celery.signals import before_task_publish


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def hanging_server() -> Iterator[int]:
    """Accepts connections and never says a word; stops with the block."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


@dataclass
class Delivered:
    recipients: list[str]
    data: str


@dataclass
class SmtpServer:
    port: int
    delivered: list[Delivered] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # recipients answered with 550
    # Sessions (numbered from 1 in the order they connect) greeted with 421 and hung up on,
    # as by a server going down: range(2, 100) takes the first message and no other.
    down: Container[int] = ()
    sessions: Iterator[int] = field(default_factory=lambda: itertools.count(1))


class _Session(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        server: SmtpServer = self.server.smtp  # type: ignore[attr-defined]
        if next(server.sessions) in server.down:
            self.reply("421 localhost Service not available, closing transmission channel")
            return
        self.reply("220 localhost test SMTP")
        recipients: list[str] = []
        for raw in self.rfile:
            command = raw.decode(errors="replace").strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in {"EHLO", "HELO"}:
                self.reply("250 localhost")
            elif verb == "MAIL":
                recipients = []
                self.reply("250 OK")
            elif verb == "RCPT":
                address = command.partition(":")[2].strip().strip("<>").lower()
                if address in server.refuse:
                    self.reply("550 No such user here")
                else:
                    recipients.append(address)
                    self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                for data_line in self.rfile:
                    if data_line in (b".\r\n", b".\n"):
                        break
                    lines.append(data_line.decode(errors="replace"))
                server.delivered.append(Delivered(recipients, "".join(lines)))
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("250 OK")


@contextmanager
def smtp_server(
    *, refuse: set[str] = frozenset(), down: Container[int] = ()
) -> Iterator[SmtpServer]:
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Session)
    tcp.daemon_threads = True
    state = SmtpServer(port=tcp.server_address[1], refuse={a.lower() for a in refuse}, down=down)
    tcp.smtp = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=tcp.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        tcp.shutdown()
        tcp.server_close()
        thread.join(timeout=5)


def use_smtp(settings, port: int, *, timeout: float = 2) -> None:
    """Point Django's mail at a loopback SMTP port (tests use the locmem backend otherwise)."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = timeout


@dataclass
class Published:
    task: str
    args: list
    kwargs: dict
    message: str  # the whole message body, as JSON: what the broker (and its logs) hold

    def run(self) -> None:
        """Run the task here, from the message, as the worker would once its countdown ends."""
        current_app.tasks[self.task].apply(args=self.args, kwargs=self.kwargs)


@contextmanager
def published_tasks() -> Iterator[list[Published]]:
    """The tasks published to the real broker in the block."""
    published: list[Published] = []

    def record(sender: str, body: tuple, **kwargs) -> None:
        args, task_kwargs, _ = body
        published.append(
            Published(sender, list(args), dict(task_kwargs), json.dumps([args, task_kwargs]))
        )

    before_task_publish.connect(record, weak=False)
    try:
        yield published
    finally:
        before_task_publish.disconnect(record)
