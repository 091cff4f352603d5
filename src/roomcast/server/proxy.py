"""Which reverse proxies the native door believes, and what it takes from their headers.

Imports L0 and ``transports.base``. A proxy in front of roomcast makes every client look like
the proxy: the peer address is the proxy's, the scheme is the proxy's hop (plain HTTP even
when the client used HTTPS) and nginx, by default, rewrites ``Host`` to its upstream's name.
``ProxyTrust`` undoes that for requests whose *peer* is one of ``--forwarded-allow-ips``:

* the client address comes from ``Forwarded: for=`` or ``X-Forwarded-For``, read from the
  right, skipping the hops that are themselves trusted proxies (as uvicorn does), so a client
  cannot choose its address by sending its own header: only what a trusted hop appended counts;
* the scheme from ``Forwarded: proto=`` or ``X-Forwarded-Proto``;
* the ``Host`` from ``Forwarded: host=`` or ``X-Forwarded-Host``, so the same-origin check
  (``CorsPolicy``) compares the browser's ``Origin`` with the host the browser asked for.

From an untrusted peer those headers are left as they are and mean nothing. In both cases
they stay in ``headers``: the keyless API refuses any forwarded request (``server.api``),
since a request relayed by a local proxy is not a local program.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from roomcast.transports.base import HttpRequest

__all__ = ["ProxyTrust"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> str | None:
    """An IP address out of a ``for=`` node or an ``X-Forwarded-For`` entry, without its port;
    ``None`` for ``unknown``, an obfuscated ``_name`` or anything else that is not one."""
    text = text.strip().strip('"')
    if text.startswith("["):  # "[2001:db8::1]:4711"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "192.0.2.60:4711"
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _forwarded(value: str) -> list[dict[str, str]]:
    """The elements of an RFC 7239 ``Forwarded`` header, each as lower-cased ``{name: value}``.

    Split on ``,`` and ``;`` outside quotes; a quoted value keeps its content without quotes.
    """
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    token: list[str] = []
    quoted = False
    for char in value + ",":
        if char == '"':
            quoted = not quoted
            continue
        if not quoted and char in ",;":
            name, equals, content = "".join(token).strip().partition("=")
            if equals:
                pairs[name.strip().lower()] = content.strip()
            token = []
            if char == ",":
                elements.append(pairs)
                pairs = {}
            continue
        token.append(char)
    return elements


class ProxyTrust:
    """The proxies to believe (``Settings.forwarded_allow_ips``), and what they say.

    Args:
        allow: IP addresses, networks (``10.0.0.0/8``) or ``"*"`` (any peer: only when
            nothing but the proxy can reach the server).

    Raises:
        ValueError: an entry is neither an address, a network nor ``"*"``.
    """

    __slots__ = ("any", "networks")

    def __init__(self, allow: Iterable[str]) -> None:
        entries = [entry.strip() for entry in allow if entry.strip()]
        self.any = "*" in entries
        networks: list[_Network] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"--forwarded-allow-ips: {entry!r} is not an IP address, a network or '*'") from None
        self.networks = tuple(networks)

    def trusts(self, host: str) -> bool:
        """Whether a peer at ``host`` is a proxy whose forwarding headers count."""
        if self.any:
            return True
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a Unix socket ("") or a name: not one of the listed addresses
        return any(address in network for network in self.networks)

    def apply(self, request: HttpRequest) -> HttpRequest:
        """``request`` as its client sent it to the proxy: its address, scheme and ``Host``.

        Call it only for a peer ``trusts`` accepts. ``Forwarded`` wins over ``X-Forwarded-*``
        when both are there. A request without forwarding headers is returned as it is.
        """
        headers = request.headers
        hops: list[str | None]
        if "forwarded" in headers:
            elements = _forwarded(headers["forwarded"])
            hops = [_address(e["for"]) if "for" in e else None for e in elements]
            last = elements[-1] if elements else {}
            proto, host = last.get("proto"), last.get("host")
        elif "x-forwarded-for" in headers or "x-forwarded-proto" in headers or "x-forwarded-host" in headers:
            hops = [_address(entry) for entry in headers.get("x-forwarded-for", "").split(",")]
            proto = headers.get("x-forwarded-proto", "").split(",")[-1].strip() or None
            host = headers.get("x-forwarded-host", "").split(",")[-1].strip() or None
        else:
            return request
        client = request.client
        for hop in reversed(hops):  # the last hop was added by the trusted peer itself
            if hop is None:
                break  # "unknown" or garbage: what is left of it cannot be believed
            client = (hop, 0)
            if not self.trusts(hop):
                break
        changes: dict[str, object] = {"client": client}
        if proto is not None and proto.lower() in ("http", "https", "ws", "wss"):
            changes["scheme"] = "https" if proto.lower() in ("https", "wss") else "http"
        if host:
            changes["headers"] = {**headers, "host": host}
        return dataclasses.replace(request, **changes)  # type: ignore[arg-type]
