"""Custom upstream base URLs must be https, must not reach private networks and must not
already hold the endpoint path ReqRun appends.

Checked twice: when the URL is saved (literal IPs and what the name resolves to now) and
again at connect time by the executor (`check_address`), so a DNS answer that changes
later cannot point ReqRun at an internal service. An IPv6 address that embeds an IPv4 one
(mapped, compatible, NAT64, 6to4, Teredo) is judged by the IPv4 address it reaches.
"""

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

from core.endpoints import PROXIED_ENDPOINTS, upstream_path


class UpstreamNotAllowed(ValueError):
    """The upstream URL or the address it resolved to is not allowed."""


ENTER_A_BASE_URL = "Enter a full base URL such as https://api.openai.com/v1."

# What ReqRun appends to a base URL for a request, longest first so that a pasted
# `…/chat/completions` is named as such, not as `/completions`. The `/models` pass-through is
# left out: a real base URL may end in it (Azure AI's model inference endpoint does).
APPENDED_PATHS = tuple(sorted(map(upstream_path, PROXIED_ENDPOINTS), key=len, reverse=True))


# IPv6 prefixes whose last 32 bits are an IPv4 address that a translator or tunnel reaches.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # ::a.b.c.d, deprecated but still routed
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT, RFC 2765
# Never public: NAT64 for an operator's own network (RFC 8215), and site-local addresses,
# deprecated but still treated as global by Python's ipaddress.
NOT_PUBLIC_IPV6 = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, translated, NAT64,
    6to4, Teredo's client), or None."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if any(ip in network for network in (NAT64, IPV4_COMPATIBLE, IPV4_TRANSLATED)):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in NOT_PUBLIC_IPV6):
            return False
        ip = embedded_ipv4(ip) or ip
    return ip.is_global and not ip.is_multicast


def check_address(address: str) -> None:
    """Refuse a resolved peer address unless private upstreams are allowed."""
    if settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS:
        return
    if not is_public_address(address):
        raise UpstreamNotAllowed(
            "The upstream resolved to a private, loopback or link-local address."
        )


def refuse_an_endpoint_path(parts: SplitResult) -> None:
    """A base URL pasted from a provider's docs with the endpoint on it would send every call
    to `…/chat/completions/chat/completions`: say what to enter instead."""
    path = parts.path.rstrip("/")
    appended = next((each for each in APPENDED_PATHS if path.endswith(each)), None)
    if appended:
        base_url = f"{parts.scheme}://{parts.netloc}{path.removesuffix(appended)}"
        raise UpstreamNotAllowed(
            "Enter the API's base URL without the endpoint: "
            f"{base_url} (ReqRun adds {appended} itself)."
        )


def validate_upstream_url(url: str) -> str:
    """Return the normalised base URL or raise UpstreamNotAllowed with a message for the user."""
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError as error:  # an unclosed [, a port out of range, an odd host
        raise UpstreamNotAllowed(ENTER_A_BASE_URL) from error
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UpstreamNotAllowed(ENTER_A_BASE_URL)
    # An empty `?` or `#` is no query or fragment to urlsplit, but would stay in the URL.
    if parts.username or parts.password or "?" in url or "#" in url:
        raise UpstreamNotAllowed(
            "The base URL must not contain credentials, a query or a fragment."
        )
    refuse_an_endpoint_path(parts)
    if settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS:
        return url
    if parts.scheme != "https":
        raise UpstreamNotAllowed("The upstream base URL must use https.")
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UpstreamNotAllowed(f"The host {parts.hostname} could not be resolved.") from error
    for info in infos:
        check_address(info[4][0])
    return url
