"""This machine's network address, as other nodes reach it.

:func:`node_address` is what ``server_config.bind = "node"`` binds (the
server, :mod:`melissa_sa.server.transport`) and where the launcher listens
when the server runs on another node (the Slurm schedulers). A low module:
it imports nothing of melissa-sa, so that config, launcher and server all
import it downwards.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

__all__ = ["HostAddressError", "is_loopback", "node_address", "interface_address"]


class HostAddressError(OSError):
    """This node has no address other nodes can reach (only loopback)."""


def is_loopback(address: str) -> bool:
    """True if ``address`` is a loopback IP address (127.x, ::1); False for a
    name or anything that is not an address."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _interfaces() -> dict[str, str | None]:
    """``{interface name: its IPv4 address, or None}`` of this node (Linux ioctl)."""
    found: dict[str, str | None] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), 0x8915,  # SIOCGIFADDR
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                found[name] = None
                continue
            found[name] = socket.inet_ntoa(packed[20:24])
    finally:
        sock.close()
    return found


def _interface_addresses() -> list[str]:
    """IPv4 addresses of this machine's interfaces, loopback last."""
    return sorted((a for a in _interfaces().values() if a), key=is_loopback)


def interface_address(name: str) -> str:
    """The IPv4 address of this node's interface ``name`` (``server_config.interface``,
    e.g. a fabric's ``ib0``). Raises :class:`HostAddressError` naming the node and
    the interfaces it has if there is no such interface or it has no IPv4 address."""
    found = _interfaces()
    if found.get(name):
        return found[name]
    have = ", ".join(f"{n} ({a or 'no IPv4 address'})" for n, a in sorted(found.items()))
    why = "has no IPv4 address" if name in found else "does not exist"
    raise HostAddressError(f"server_config.interface {name!r}: on node {socket.gethostname()} "
                           f"that interface {why}; the node's interfaces: {have or 'none'}")


def node_address() -> str:
    """The IPv4 address other nodes reach this one at: the host name's
    (FQDN's) address unless it is loopback (Debian maps the host name to
    127.0.1.1), else the default route's source address, else the first
    interface's. Raises :class:`HostAddressError` if only loopback is found."""
    for name in (socket.getfqdn(), socket.gethostname()):
        try:
            infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        for info in infos:
            if not is_loopback(info[4][0]):
                return info[4][0]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.255", 9))  # no packet is sent: only the route is looked up
        address = probe.getsockname()[0]
        if address and not is_loopback(address) and address != "0.0.0.0":
            return address
    except OSError:
        pass
    finally:
        probe.close()
    for address in _interface_addresses():
        if not is_loopback(address):
            return address
    raise HostAddressError(f'server_config.bind "node": host {socket.gethostname()} has no '
                           f"address but loopback; set server_config.bind to an address of "
                           f"this node")
