"""The server's ZeroMQ sockets: the one place that creates, binds and polls them.

Every rank binds a PULL data socket; rank 0 also binds the REP connection
socket (client handshakes) and connects a DEALER to the launcher. Ports are
tried upward from the configured ones (``data_puller_port + rank``, stepping
by the number of ranks, so ranks on one node never collide).

Binding happens on ``server_config.bind`` (:func:`resolve_bind`): an address
or host name; ``"node"`` (the Slurm default) is the IPv4 address of this
node's host name, or, where that name resolves to loopback, the address of the
interface of the default route, or, with ``server_config.interface`` (a
fabric's ``"ib0"``), the address of that interface on this node;
``"*"`` / ``"0.0.0.0"`` is every interface.
The address advertised to clients and to the launcher is the bound one, or the
node's address when binding every interface: never 0.0.0.0, and never
loopback when bound beyond it.

Authentication (:mod:`melissa_sa.auth`): given the study secret, the REP and
PULL sockets become PLAIN servers checked by the context's ZAP guard (before
they bind) and the DEALER to the launcher presents the secret. The server
passes the secret always (``OUT/secret``); :attr:`Transport.refused` counts
the peers turned away.
"""

from __future__ import annotations

import logging

import zmq

from melissa_sa.auth import ZapGuard, secure_client_socket, secure_server_socket
from melissa_sa.hosts import HostAddressError, interface_address, is_loopback, node_address

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


def is_loopback_bind(bind: str) -> bool:
    """True if ``server_config.bind`` keeps the server on loopback."""
    return bind == "localhost" or is_loopback(bind)


def resolve_bind(bind: str, interface: str | None = None) -> tuple[str, str]:
    """``(address to bind, address to advertise)`` for ``server_config.bind``;
    with ``server_config.interface``, "node" means that interface's address.
    A node without such an address is a :class:`FatalError` saying why."""
    if bind not in ("node", "*", "0.0.0.0"):
        return bind, bind
    try:
        address = interface_address(interface) if interface else node_address()
    except HostAddressError as exc:
        raise FatalError(str(exc)) from None
    return ("0.0.0.0" if bind != "node" else address), address


class Transport:
    """The sockets of one server rank and their poller.

    ``secret``: the study secret (None: no authentication, only for loopback
    sockets in tests); ``log``: where the guard's lines go.
    """

    def __init__(self, *, rank: int, size: int, bind: str, hwm: int,
                 secret: str | None = None, log=None, interface: str | None = None):
        self.rank, self.size = rank, size
        self.host, self.advertised = resolve_bind(bind, interface)
        self.loopback_only = is_loopback_bind(self.host)
        if secret is None and not self.loopback_only:
            raise FatalError(f"server_config.bind {bind!r} listens beyond loopback: the "
                             f"study secret is required")
        self.secret = secret
        self.hwm = hwm
        self.context = zmq.Context()
        self.guard: ZapGuard | None = None
        self._guard_log = log
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
        self._secure(s)
        port = bind_first_free(s, self.host, base_port + self.rank, step=self.size)
        self.poller.register(s, zmq.POLLIN)
        self.data_endpoint = f"tcp://{self.advertised}:{port}"
        return self.data_endpoint

    def bind_connection(self, base_port: int, avoid: set[int]) -> str:
        """Rank 0: bind the REP handshake socket on a port not in ``avoid``."""
        s = self.connection_socket = self.context.socket(zmq.REP)
        s.setsockopt(zmq.LINGER, 0)
        self._secure(s)
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
        if self.secret:
            secure_client_socket(s, self.secret)
        s.connect(address)
        self.poller.register(s, zmq.POLLIN)

    def _secure(self, sock: zmq.Socket) -> None:
        if self.secret:
            options = {"log": self._guard_log} if self._guard_log else {}
            self.guard = secure_server_socket(sock, self.secret, **options)

    @property
    def refused(self) -> int:
        """Peers refused by authentication on this rank's sockets."""
        return self.guard.refused if self.guard is not None else 0

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
        if self.guard is not None:
            self.guard.close()
        if self.context is not None:
            self.context.term()
            self.context = None
