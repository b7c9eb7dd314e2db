"""Where webhooks may go: a receiver's host must resolve to public addresses only.

A webhook URL is chosen by whoever manages endpoints, and the gateway sends it requests from
inside the network it runs in; without this check an endpoint could point at a database, an
admin port on loopback or a cloud metadata service. Every address the host resolves to must be
globally routable (so loopback, private, link-local, carrier-grade NAT, multicast and reserved
ranges, and with them the metadata addresses 169.254.169.254 and fd00:ec2::254, are refused).

The check runs before each attempt, and the resolver the HTTP client connects with applies it
again to the very addresses it connects to, so a name that changes its answer between the two
(DNS rebinding) is still refused.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver


class BlockedAddress(OSError):
    """The receiver's host is, or resolves to, an address webhooks may not reach."""


def blocked(address: str) -> bool:
    """Whether ``address`` (an IP literal) is not globally routable."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def literal(host: str) -> str | None:
    """``host`` as an IP address string if it is one (brackets of IPv6 removed), else None."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return None
    return bare


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's threaded resolver, refusing hosts with a blocked address."""

    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        refused = sorted({r["host"] for r in results if blocked(r["host"])})
        if refused:
            raise BlockedAddress(
                f"{host} resolves to {', '.join(refused)}, which webhooks may not reach "
                "(webhooks.allow_private_networks)"
            )
        return results

    async def close(self) -> None:
        await self._inner.close()


async def check_host(host: str, resolver: AbstractResolver) -> None:
    """Raise BlockedAddress if ``host`` is, or resolves to, a blocked address."""
    address = literal(host)
    if address is not None:
        if blocked(address):
            raise BlockedAddress(
                f"{address} is an address webhooks may not reach (webhooks.allow_private_networks)"
            )
        return
    await resolver.resolve(host, 0, socket.AF_UNSPEC)
