"""Where a webhook may POST: public http(s) addresses, and private ones only where the access file says so.

A webhook URL comes from the access file, but the address it reaches comes from DNS at the moment of
the request. Without a rule, a webhook is a way to make the gateway send alerts (and probe) inside its
own network: its loopback, the LAN, the cloud metadata service. So a webhook target must be ``http://``
or ``https://`` and its host must be, and resolve to, a public address. Refused:

  * loopback          127.0.0.0/8, ::1
  * link-local        169.254.0.0/16 (the cloud metadata service 169.254.169.254 too), fe80::/10
  * private           10/8, 172.16/12, 192.168/16, fc00::/7
  * not global        any other address that is not globally routable (100.64/10, 192.0.2/24, ...)
  * unspecified       0.0.0.0/8, ::
  * multicast, reserved (240/4, the broadcast address, ::/8 forms such as ``::127.0.0.1``)

and the IPv4-mapped (``::ffff:10.0.0.1``) and NAT64 (``64:ff9b::a00:1``) forms of each. A webhook
whose receiver really is inside (``http://hooks.internal/``, a test on loopback) says so on its own
entry of the access file::

    [[webhooks]]
    name = "cc-internal"
    url = "http://hooks.internal:8080/alerts"
    allow_private = true      # this webhook may reach loopback, private, link-local addresses

``allow_private`` lifts the first four rules for that webhook only; unspecified, multicast and
reserved addresses, and any scheme but http(s), are never a webhook target.

The rule is checked twice. When the access file is loaded (an IP in the URL, or what the name resolves
to then; ``localhost`` and ``*.localhost`` are loopback without asking DNS), an AccessFileError names
the webhook and the rule. And at every delivery attempt: the name is resolved once, every address it
resolves to must pass, and the request goes to that checked address (the URL's host is replaced by it,
the ``Host`` header and the TLS server name stay the name), so DNS answering differently later (DNS
rebinding) cannot redirect a POST. Redirects are never followed (the client is built with
``follow_redirects=False``), so a 3xx cannot point the gateway elsewhere either.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: what each rule refuses, for messages
RULES = {
    "loopback": "a loopback address (127.0.0.0/8, ::1)",
    "link-local": "a link-local address (169.254.0.0/16, the cloud metadata service 169.254.169.254 among them; "
                  "fe80::/10)",
    "private": "a private address (10/8, 172.16/12, 192.168/16, fc00::/7)",
    "not-global": "an address that is not globally routable",
    "unspecified": "an unspecified address (0.0.0.0/8, ::)",
    "multicast": "a multicast address",
    "reserved": "a reserved address",
}
#: the rules ``allow_private = true`` lifts (for that webhook only)
LIFTED_BY_ALLOW_PRIVATE = frozenset({"loopback", "link-local", "private", "not-global"})

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[[str, int], Awaitable[Iterable[str]]]


class ForbiddenTarget(ValueError):
    """A webhook URL, or the address it resolves to, that the gateway may not POST to; the message says why."""

    def __init__(self, message: str, rule: str = "scheme"):
        super().__init__(message)
        self.rule = rule


def _unwrap(ip: IPAddress) -> tuple[IPAddress, str]:
    """The IPv4 address inside an IPv4-mapped or NAT64 IPv6 address (and how it was written), else ``ip``."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped, "IPv4-mapped "
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64 "
    return ip, ""


def address_rule(address: str | IPAddress) -> str | None:
    """The rule (a key of RULES) ``address`` breaks as a webhook target, or None for a public address."""
    ip, _ = _unwrap(ipaddress.ip_address(address))
    v4 = isinstance(ip, ipaddress.IPv4Address)
    if ip.is_unspecified or (v4 and ip in _THIS_NETWORK):
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_multicast:
        return "multicast"
    if ip.is_link_local:
        return "link-local"
    if v4 and ip.is_reserved:          # 240/4 and the broadcast address: before is_private, which includes them
        return "reserved"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "not-global"
    return None


def check_address(address: str, *, allow_private: bool, host: str | None = None) -> None:
    """ForbiddenTarget unless a webhook may POST to ``address`` (which ``host`` resolved to, if given)."""
    rule = address_rule(address)
    if rule is None or (allow_private and rule in LIFTED_BY_ALLOW_PRIVATE):
        return
    inner, form = _unwrap(ipaddress.ip_address(address))
    shown = f"{address} (the {form}form of {inner})" if form else address
    if host and host != address:
        subject = f"host {host!r} resolves to {shown}, {RULES[rule]}"
    else:
        subject = f"{shown} is {RULES[rule]}"
    if rule in LIFTED_BY_ALLOW_PRIVATE:
        raise ForbiddenTarget(f"{subject}; a webhook may target it only if its entry in the access file "
                              f"sets `allow_private = true`", rule)
    raise ForbiddenTarget(f"{subject}, never a webhook target", rule)


@dataclass(frozen=True)
class Parsed:
    scheme: str
    host: str              # ASCII (IDNA) form, without brackets
    port: int
    literal: bool          # the host is an IP address


def parse_target(url: str) -> Parsed:
    """Scheme, host and port of a webhook URL; ForbiddenTarget if it is not an http(s) URL with a host."""
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
        raise ForbiddenTarget(f"expected an http:// or https:// URL, got {url!r}")
    try:
        parsed = httpx2.URL(url)
        host = parsed.raw_host.decode("ascii")
    except Exception as exc:  # httpx2.InvalidURL, UnicodeError
        raise ForbiddenTarget(f"{url!r} is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise ForbiddenTarget(f"expected an http:// or https:// URL with a host, got {url!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    return Parsed(parsed.scheme, host.lower(), port, literal)


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")    # RFC 6761: always loopback


def check_at_load(url: str, *, allow_private: bool, resolve: bool = True) -> list[str]:
    """Check a webhook URL when the access file is loaded; ForbiddenTarget names the rule.

    Returns the addresses the host resolved to (empty when it could not be resolved now: the check at
    delivery time decides then).
    """
    target = parse_target(url)
    if target.literal:
        check_address(target.host, allow_private=allow_private)
        return [target.host]
    if _is_localhost(target.host):
        check_address("127.0.0.1", allow_private=allow_private, host=target.host)
    if not resolve:
        return []
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    addresses = list(dict.fromkeys(_strip_scope(info[4][0]) for info in infos))
    for address in addresses:
        check_address(address, allow_private=allow_private, host=target.host)
    return addresses


def _strip_scope(address: str) -> str:
    return address.split("%", 1)[0]          # fe80::1%eth0 -> fe80::1


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [_strip_scope(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Target:
    """Where one delivery attempt goes: the checked address, with what keeps the name for HTTP and TLS."""

    url: str                  # the webhook URL with its host replaced by ``address``
    address: str
    host: str
    headers: dict = field(default_factory=dict)        # Host: the name (and port) of the original URL
    extensions: dict = field(default_factory=dict)     # sni_hostname: the name, for TLS and its certificate


async def resolve_target(url: str, *, allow_private: bool, attempt: int = 1,
                         resolver: Resolver | None = None) -> Target:
    """Resolve the webhook's host once, check every address, and return the request to make.

    ForbiddenTarget when any address is refused (a name that resolves to a public and a private
    address is refused: which one would be used is not ours to choose); OSError when it does not
    resolve. Successive attempts rotate through the addresses.
    """
    target = parse_target(url)
    if target.literal:
        addresses = [target.host]
    elif _is_localhost(target.host):
        addresses = ["127.0.0.1"]
    else:
        addresses = list(dict.fromkeys(await (resolver or _getaddrinfo)(target.host, target.port)))
        if not addresses:
            raise OSError(f"{target.host!r} resolves to no address")
    for address in addresses:
        check_address(address, allow_private=allow_private, host=target.host)
    address = addresses[(attempt - 1) % len(addresses)]
    if target.literal:
        return Target(url=url, address=address, host=target.host)
    original = httpx2.URL(url)
    return Target(url=str(original.copy_with(host=address)), address=address, host=target.host,
                  headers={"Host": original.netloc.decode("ascii")},
                  extensions={"sni_hostname": target.host} if target.scheme == "https" else {})
