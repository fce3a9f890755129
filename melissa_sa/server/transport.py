"""The server's ZeroMQ sockets: the one place that creates, binds and polls them.

Every rank binds a PULL data socket; rank 0 also binds the REP connection
socket (client handshakes) and connects a DEALER to the launcher. Ports are
tried upward from the configured ones (``data_puller_port + rank``, stepping
by the number of ranks, so ranks on one node never collide). Binding
happens on ``server_config.bind`` (127.0.0.1 unless configured); the address
advertised to clients is the host name when binding all interfaces.
"""

from __future__ import annotations

import logging
import socket

import zmq

log = logging.getLogger("melissa_sa.server")

PORT_ATTEMPTS = 200


class FatalError(RuntimeError):
    """An error that ends the study (no port, bad user class, ...)."""


def bind_first_free(sock: zmq.Socket, host: str, port: int, step: int = 1) -> int:
    """Bind ``sock`` on ``host`` at ``port``, ``port + step``, ... ; return it."""
    last_error = None
    for attempt in range(PORT_ATTEMPTS):
        candidate = port + attempt * step
        if candidate > 65535:
            break
        try:
            sock.bind(f"tcp://{host}:{candidate}")
            return candidate
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE:
                raise
            last_error = exc
    raise FatalError(f"no free port on {host} from {port} in {PORT_ATTEMPTS} attempts "
                     f"(step {step}): {last_error}")


class Transport:
    """The sockets of one server rank and their poller."""

    def __init__(self, *, rank: int, size: int, bind: str, hwm: int):
        self.rank, self.size = rank, size
        self.host = bind
        self.advertised = bind if bind not in ("0.0.0.0", "*") else socket.gethostname()
        self.hwm = hwm
        self.context = zmq.Context()
        self.poller = zmq.Poller()
        self.data_socket = self.connection_socket = self.launcher_socket = None
        self.data_endpoint = ""
        self.connection_address = ""
        self.connection_port = 0

    def bind_data(self, base_port: int) -> str:
        """Bind this rank's PULL socket; return its endpoint as clients reach it."""
        s = self.data_socket = self.context.socket(zmq.PULL)
        s.setsockopt(zmq.RCVHWM, self.hwm)
        s.setsockopt(zmq.LINGER, 0)
        port = bind_first_free(s, self.host, base_port + self.rank, step=self.size)
        self.poller.register(s, zmq.POLLIN)
        self.data_endpoint = f"tcp://{self.advertised}:{port}"
        return self.data_endpoint

    def bind_connection(self, base_port: int, avoid: set[int]) -> str:
        """Rank 0: bind the REP handshake socket on a port not in ``avoid``."""
        s = self.connection_socket = self.context.socket(zmq.REP)
        s.setsockopt(zmq.LINGER, 0)
        port = base_port
        while True:
            port = bind_first_free(s, self.host, port)
            if port not in avoid:
                break
            s.unbind(f"tcp://{self.host}:{port}")
            port += 1
        self.poller.register(s, zmq.POLLIN)
        self.connection_port = port
        self.connection_address = f"tcp://{self.advertised}:{port}"
        return self.connection_address

    def connect_launcher(self, address: str) -> None:
        """Rank 0: a DEALER to the launcher's ROUTER."""
        s = self.launcher_socket = self.context.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 2000)
        s.connect(address)
        self.poller.register(s, zmq.POLLIN)

    def send_launcher(self, raw: bytes) -> None:
        if self.launcher_socket is not None:
            self.launcher_socket.send(raw)

    def poll(self, timeout: float) -> dict:
        """Sockets ready within ``timeout`` seconds."""
        return dict(self.poller.poll(int(timeout * 1000)))

    def close(self) -> None:
        for sock in (self.data_socket, self.connection_socket, self.launcher_socket):
            if sock is not None:
                sock.close()
        self.data_socket = self.connection_socket = self.launcher_socket = None
        if self.context is not None:
            self.context.term()
            self.context = None
