"""Which address a request came from: the peer, or the client a trusted proxy forwarded
(REQRUN_TRUSTED_PROXIES). Rate limits, lockouts, audit events and /metrics' allow-list all
read it here."""

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(
    name: str, entries: Iterable[str], *, anyone: bool = False
) -> tuple[IPNetwork, ...]:
    """The setting `name`'s addresses or networks (`10.0.0.0/8`), and with `anyone`, `*` for
    every address (left out here: `is_trusted_proxy` reads it). ValueError names the first
    entry that is neither. settings.py refuses to start on it; met here, at a request, the
    setting was changed since (as tests do)."""
    networks = []
    for entry in entries:
        if anyone and entry == "*":
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            star = ", or * behind a platform router" if anyone else ""
            raise ValueError(
                f"{name}: {entry!r} is not an IP address or network "
                f"(use e.g. 127.0.0.1,10.0.0.0/8{star})."
            ) from None
    return tuple(networks)


@lru_cache(maxsize=8)
def _configured(name: str, entries: tuple[str, ...], anyone: bool) -> tuple[IPNetwork, ...]:
    try:
        return parse_networks(name, entries, anyone=anyone)
    except ValueError as error:
        raise ImproperlyConfigured(str(error)) from None


def configured_networks(name: str, *, anyone: bool = False) -> tuple[IPNetwork, ...]:
    """The list in setting `name` parsed (`parse_networks`); ImproperlyConfigured names an
    entry that is not an address or network."""
    return _configured(name, tuple(getattr(settings, name)), anyone)


def trusted_proxy_networks() -> tuple[IPNetwork, ...]:
    return configured_networks("REQRUN_TRUSTED_PROXIES", anyone=True)


def is_trusted_proxy(address: IPAddress) -> bool:
    if "*" in settings.REQRUN_TRUSTED_PROXIES:
        return True
    return any(address in network for network in trusted_proxy_networks())


def parse_address(text: str) -> IPAddress | None:
    """An address as proxies write it (`203.0.113.7`, `[2001:db8::1]:443`, `1.2.3.4:80`), or
    None when it is not one. IPv4-mapped IPv6 peers count as their IPv4 address."""
    text = text.strip()
    if text.startswith("["):
        text, closed, _ = text[1:].partition("]")
        if not closed:
            return None
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_ip_of(meta: Mapping[str, str]) -> str | None:
    """The client's address, from a request's META (where only that is at hand, as in /v1
    authentication).

    The peer (REMOTE_ADDR) unless it is one of REQRUN_TRUSTED_PROXIES; then X-Forwarded-For is
    read from the right (each proxy appends the address it saw) and the first hop that is not
    a trusted proxy is the client. Hops left of it were written by the client and are never
    believed; a malformed hop ends the walk at the last address a trusted proxy vouched for.
    With `*` every address would count as a proxy and the walk would end at the client's own
    claim: the peer is the platform's router, and only the hop it wrote is believed.
    """
    address = parse_address(meta.get("REMOTE_ADDR", ""))
    if address is None:
        return None
    hops = meta.get("HTTP_X_FORWARDED_FOR", "").split(",")
    if "*" in settings.REQRUN_TRUSTED_PROXIES:
        hops = hops[-1:]
    for hop in reversed(hops):
        if not is_trusted_proxy(address):
            break
        forwarded = parse_address(hop)
        if forwarded is None:
            break
        address = forwarded
    return str(address)
