"""Which URLs the operator POSTs to on a CompressedModel's behalf (webhooks and notifications).

A CR author names the URL; the operator makes the request from inside the cluster with its own network
identity, so an unchecked URL is a server-side request forgery: the cloud's metadata endpoint, the API
server, any Service the operator's NetworkPolicy lets it reach. A URL is allowed when it is

- under a prefix of ``KONDENSE_WEBHOOK_ALLOWED_URLS`` (chart ``operator.webhookAllowedUrls``): same
  scheme, host and port, and a path at or below the prefix's path (``/hooks`` allows ``/hooks`` and
  ``/hooks/a``, never ``/hooksx``); or
- a Service of the CR's own namespace, by its cluster name ``http(s)://<service>.<namespace>.svc[.<domain>]``
  (``KONDENSE_WEBHOOK_OWN_NAMESPACE_SERVICES``, on by default): the author can run such a Service anyway.
  An ExternalName Service is refused at call time (it is a DNS alias that can point anywhere).

URLs with credentials (``user@host``) or dot segments (``/a/../b``) are refused outright: they would
make the prefix check say something other than what the receiver sees. Redirects are never followed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UrlRefused(ValueError):
    """A URL the policy does not allow (the message says why and what is allowed)."""


@dataclass(frozen=True)
class _Parts:
    scheme: str
    host: str
    port: int
    path: str


def _parts(url: str) -> _Parts:
    try:
        split: SplitResult = urlsplit(url)
        port = split.port
    except ValueError as exc:
        raise UrlRefused(f"{url!r} is not a valid URL ({exc})") from None
    scheme = split.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not split.hostname:
        raise UrlRefused(f"{url!r} is not an http(s) URL with a host")
    if "@" in split.netloc:
        raise UrlRefused(f"{url!r} carries credentials before the host (user@host): not allowed")
    segments = unquote(split.path).split("/")
    if "." in segments or ".." in segments or "\\" in unquote(split.path):
        raise UrlRefused(f"{url!r} has dot segments or backslashes in its path: not allowed")
    host = split.hostname.lower().rstrip(".")
    return _Parts(scheme, host, port or _DEFAULT_PORTS[scheme], split.path or "/")


def _under(url: _Parts, prefix: _Parts) -> bool:
    if (url.scheme, url.host, url.port) != (prefix.scheme, prefix.host, prefix.port):
        return False
    base = prefix.path.rstrip("/")
    return not base or url.path == base or url.path.startswith(base + "/")


def check_prefixes(prefixes: Sequence[str]) -> list[str]:
    """The allow-list entries themselves must be plain http(s) URLs (no query, no credentials)."""
    for prefix in prefixes:
        _parts(prefix)
        if urlsplit(prefix).query or urlsplit(prefix).fragment:
            raise UrlRefused(f"{prefix!r}: an allowed URL prefix has no query or fragment")
    return list(prefixes)


@dataclass(frozen=True)
class UrlPolicy:
    allowed: tuple[str, ...] = ()
    service_domain: str = "svc.cluster.local"
    own_namespace_services: bool = True

    def own_service(self, url: str, namespace: str) -> str | None:
        """The Service name when ``url`` names a Service of ``namespace`` by its cluster name."""
        try:
            host = _parts(url).host
        except UrlRefused:
            return None
        for suffix in (f".{namespace}.svc", f".{namespace}.{self.service_domain.strip('.')}"):
            if host.endswith(suffix):
                service = host[: -len(suffix)]
                return service if DNS_LABEL.match(service) else None
        return None

    def problem(self, url: str, namespace: str) -> str | None:
        """Why the operator may not POST to ``url`` for a CompressedModel of ``namespace`` (None: it may)."""
        try:
            parts = _parts(url)
        except UrlRefused as exc:
            return str(exc)
        if any(_under(parts, _parts(prefix)) for prefix in self.allowed):
            return None
        if self.own_namespace_services and self.own_service(url, namespace) is not None:
            return None
        services = (
            f"or a Service of namespace {namespace} (http://<service>.{namespace}.svc...)"
            if self.own_namespace_services
            else "Services of the CR's namespace are not allowed either"
        )
        allowed = ", ".join(self.allowed) or "none"
        return (
            f"{url!r} is not on the operator's allow-list: use a URL under KONDENSE_WEBHOOK_ALLOWED_URLS "
            f"(chart operator.webhookAllowedUrls; allowed: {allowed}) {services}"
        )

    def check(
        self, url: str, namespace: str, get_service: Callable[[str], Mapping[str, Any] | None]
    ) -> str | None:
        """``problem``, and at call time: an own-namespace Service must exist and not be an alias."""
        problem = self.problem(url, namespace)
        if problem is not None:
            return problem
        parts = _parts(url)
        if any(_under(parts, _parts(prefix)) for prefix in self.allowed):
            return None
        service = self.own_service(url, namespace)
        assert service is not None  # allowed, and not by a prefix
        return external_name_problem(url, get_service(service))


def external_name_problem(url: str, service: Mapping[str, Any] | None) -> str | None:
    """An own-namespace Service URL is refused when the Service is an ExternalName alias or missing."""
    if service is None:
        return f"{url!r}: the Service it names does not exist"
    spec = service.get("spec")
    if isinstance(spec, dict) and spec.get("type") == "ExternalName":
        return (
            f"{url!r} names an ExternalName Service (an alias that can point anywhere): put its target "
            "on KONDENSE_WEBHOOK_ALLOWED_URLS instead"
        )
    return None
