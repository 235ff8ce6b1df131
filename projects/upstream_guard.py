"""Custom upstream base URLs must be https and must not reach private networks.

Checked twice: when the URL is saved (literal IPs and what the name resolves to now) and
again at connect time by the executor (`check_address`), so a DNS answer that changes
later cannot point ReqRun at an internal service.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


class UpstreamNotAllowed(ValueError):
    """The upstream URL or the address it resolved to is not allowed."""


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_address(address: str) -> None:
    """Refuse a resolved peer address unless private upstreams are allowed."""
    if settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS:
        return
    if not is_public_address(address):
        raise UpstreamNotAllowed(
            "The upstream resolved to a private, loopback or link-local address."
        )


def validate_upstream_url(url: str) -> str:
    """Return the normalised base URL or raise UpstreamNotAllowed with a message for the user."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UpstreamNotAllowed("Enter a full base URL such as https://api.openai.com/v1.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UpstreamNotAllowed(
            "The base URL must not contain credentials, a query or a fragment."
        )
    if settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS:
        return url
    if parts.scheme != "https":
        raise UpstreamNotAllowed("The upstream base URL must use https.")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UpstreamNotAllowed(f"The host {parts.hostname} could not be resolved.") from error
    for info in infos:
        check_address(info[4][0])
    return url
