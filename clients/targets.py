"""From the address(es) a user gives to a gRPC target and service config.

Why this exists: recommenders are stateless readers of one model root, so
any number of replicas can serve it, and the client should spread calls
over them and step around a replica that is down or has no model yet. gRPC
already does all of that inside the channel when the *service config* asks
for it, which beats a hand-written balancer (it knows connection states,
reconnects with backoff, and retries an attempt on another backend):

* ``loadBalancingConfig: [{"round_robin": {}}]`` opens a connection to every
  address and sends each call to the next READY one;
* ``healthCheckConfig: {"serviceName": "movierec.v1.Recommender"}`` makes the
  channel watch each backend's ``grpc.health.v1`` status and take a backend
  that reports NOT_SERVING (no model loaded yet, or shutting down) out of the
  rotation until it reports SERVING again; a dead backend leaves the rotation
  when its connection breaks;
* the retry policy (``credentials.RETRY_POLICY``) re-sends an idempotent call
  that failed with UNAVAILABLE, and round robin hands the retry to the next
  backend, so a replica killed mid-call costs the caller nothing.

The only thing gRPC cannot take is a *list of host names* as one target:
its ``ipv4:``/``ipv6:`` targets take several addresses but only IP
literals, and ``dns:`` takes one name. So a list is resolved here, once,
when the client is made (IPv4 preferred: servers bind 127.0.0.1 by
default, and ``localhost`` often resolves to ``::1`` first). When replicas
come and go, give one DNS name with a record per replica instead
(``dns:///recommender.internal:50052``): gRPC re-resolves that itself.

One address keeps the plain behaviour (pick first, no health checking): a
lone recommender that has no model yet then answers for itself
(UNAVAILABLE, "no model is loaded yet ..."), and ``status`` can still reach
it to say why.

TLS with a list: every backend gets the same credentials, and every
backend's certificate is checked against the host name of the *first*
address (sent as the channel's authority), as behind a DNS name where all
replicas share one name. Replicas need a certificate valid for that name
(or a subjectAltName per replica name and one listed first); pass
``options=[("grpc.ssl_target_name_override", NAME)]`` to check another.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from typing import Any, NamedTuple

from .credentials import RETRY_POLICY
from .errors import ConfigurationError

__all__ = ["ChannelTarget", "channel_target"]

# Target schemes gRPC's C core resolves itself; such a target is passed on unchanged.
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:", "google-c2p:")


class ChannelTarget(NamedTuple):
    target: str  # what grpc.insecure_channel / secure_channel get
    service_config: str  # JSON: retries, and for several backends round robin + health checking
    balanced: bool  # round robin over health-checked backends
    addresses: tuple[str, ...]  # each backend as "host:port" (or the target itself), for loopback checks
    authority: str | None  # the channel's authority (TLS name) when the target is an address list


def channel_target(
    address: str | Sequence[str],
    *,
    service: str,
    retried: Sequence[str],
    balance: bool = True,
) -> ChannelTarget:
    """The gRPC target and service config for ``address``.

    ``address`` is one ``host:port``, several separated by commas (or a list
    of them), or a gRPC target URI (``dns:///name:port``, ``ipv4:a:p,b:p``,
    ``unix:path``) passed through unchanged. Several addresses, a ``dns:``
    target and a multi-address ``ipv4:``/``ipv6:`` target are balanced round
    robin over the backends whose health check reports ``service`` SERVING
    (unless ``balance`` is false: then several addresses are refused).
    ``retried`` names the methods of ``service`` gRPC retries on UNAVAILABLE.
    """
    addresses = _split(address)
    if not addresses:
        raise ConfigurationError("no address given")
    if len(addresses) == 1:
        target = addresses[0]
        scheme = target.split(":", 1)[0] + ":" if target.startswith(_SCHEMES) else ""
        balanced = balance and (scheme == "dns:" or (scheme in ("ipv4:", "ipv6:") and "," in target))
        return ChannelTarget(target, service_config(service, retried, balanced), balanced, (target,), None)
    if not balance:
        raise ConfigurationError(f"{service} takes one address, got {len(addresses)}: {', '.join(addresses)}")
    parsed = [_host_port(a) for a in addresses]
    resolved = [_resolve(host, port) for host, port in parsed]
    if all(v4 for v4, _ in resolved):
        backends = [f"{ip}:{port}" for (v4, _), (_, port) in zip(resolved, parsed, strict=True) for ip in v4]
        scheme = "ipv4:"
    elif all(v6 for _, v6 in resolved):
        backends = [f"[{ip}]:{port}" for (_, v6), (_, port) in zip(resolved, parsed, strict=True) for ip in v6]
        scheme = "ipv6:"
    else:
        raise ConfigurationError(
            f"the addresses {', '.join(addresses)} do not share an IP family (all IPv4 or all IPv6); "
            "give a DNS name with a record per replica instead (dns:///NAME:PORT)")
    backends = list(dict.fromkeys(backends))  # the same backend twice would get twice the calls
    host, port = parsed[0]
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ChannelTarget(scheme + ",".join(backends), service_config(service, retried, True), True,
                         tuple(backends), authority)


def service_config(service: str, retried: Sequence[str], balanced: bool) -> str:
    """Retries for the ``retried`` methods; with ``balanced``, round robin over healthy backends."""
    config: dict[str, Any] = {
        "methodConfig": [
            {"name": [{"service": service, "method": method} for method in retried], "retryPolicy": RETRY_POLICY}
        ]
    }
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": service}
    return json.dumps(config)


def _split(address: str | Sequence[str]) -> list[str]:
    if isinstance(address, str):
        address = address.strip()
        if address.startswith(_SCHEMES):
            return [address]  # may hold commas of its own (ipv4:a:p,b:p)
        parts = address.split(",")
    else:
        parts = list(address)
    parts = [str(p).strip() for p in parts]
    parts = [p for p in parts if p]
    if len(parts) > 1:
        for part in parts:
            if part.startswith(_SCHEMES):
                raise ConfigurationError(
                    f"{part!r}: a target URI cannot be one of several addresses; give it alone")
    return parts


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); one of several addresses needs its port."""
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        ok = bracket and rest.startswith(":")
    else:
        host, colon, port = address.rpartition(":")
        ok = colon and ":" not in host
    if not ok or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{address!r} is not HOST:PORT (IPv6 as [ADDRESS]:PORT)")
    return host, int(port)


def _resolve(host: str, port: int) -> tuple[list[str], list[str]]:
    """The host's (IPv4, IPv6) addresses; an IP literal is its own answer."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return ([str(ip)], []) if ip.version == 4 else ([], [str(ip)])
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigurationError(f"cannot resolve {host!r}: {exc}") from exc
    v4 = [str(info[4][0]) for info in infos if info[0] == socket.AF_INET]
    v6 = [str(info[4][0]) for info in infos if info[0] == socket.AF_INET6]
    return list(dict.fromkeys(v4)), list(dict.fromkeys(v6))
