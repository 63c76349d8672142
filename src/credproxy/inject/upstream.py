"""Where the proxy may connect: each upstream name resolved once, every address checked.

The resolver hands aiohttp's connector only addresses that passed the check,
so the connection goes to exactly the address that was checked, while TLS
still uses the route's host name for SNI and certificate verification.
Link-local (cloud metadata lives at 169.254.169.254 and fd00:ec2::254),
multicast, unspecified and reserved addresses are always refused; private
and loopback ones unless the route sets ``allow_private``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from typing import Any, Final

from aiohttp.abc import AbstractResolver, ResolveResult

METADATA_ADDRESSES: Final = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UpstreamRefused(OSError):
    """The upstream's address is one the proxy must not reach; the message says which kind."""


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why ``address`` is refused, or ``None`` when it may be used."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a multicast, unspecified or reserved address"
    if not allow_private and (address.is_loopback or address.is_private):
        return "a loopback or private address (set allow_private = true on the route to allow)"
    return None


def check_literal(host: str, *, allow_private: bool) -> None:
    """An IP literal in a URL bypasses resolvers, so check it here."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    reason = address_refusal(address, allow_private=allow_private)
    if reason is not None:
        raise UpstreamRefused(f"upstream {host} is {reason}")


class CheckedResolver(AbstractResolver):
    """Resolves with the system resolver (or ``hosts``, a test-only name -> address map)
    and returns only checked addresses; none left is an ``UpstreamRefused``."""

    def __init__(self, *, allow_private: bool, hosts: Mapping[str, str] | None = None) -> None:
        self._allow_private = allow_private
        self._hosts = dict(hosts or {})

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host in self._hosts:
            infos: list[tuple[Any, ...]] = [
                (
                    socket.AF_INET6 if ":" in self._hosts[host] else socket.AF_INET,
                    0,
                    0,
                    "",
                    (self._hosts[host], port),
                )
            ]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
            except socket.gaierror as exc:
                raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
        results: list[ResolveResult] = []
        reasons: list[str] = []
        for fam, _, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            reason = address_refusal(address, allow_private=self._allow_private)
            if reason is not None:
                reasons.append(reason)
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise UpstreamRefused(
                f"upstream {host} resolves to {reasons[0] if reasons else 'nothing'}"
            )
        return results

    async def close(self) -> None:
        return None
