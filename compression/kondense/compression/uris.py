"""Resolve model/data URIs to local files: ``file://`` (or a plain path), ``pvc://claim/path`` (a
mounted volume at ``<pvc root>/<claim>/<path>``, by the one rule of ``kondense.api.uris``) and
``http(s)://`` (downloaded).

Downloads are bounded and careful, because the URI comes from whoever wrote the resource:

* a **total deadline** for the whole download (redirects included), besides per-read timeouts;
* at most ``MAX_REDIRECTS`` redirects, each one checked again; an https → http redirect is refused;
* every address a host name resolves to must be **globally routable**: private, loopback,
  link-local, CGNAT, multicast and reserved addresses are refused (the cluster's own services, the
  node, the cloud metadata endpoint), and the connection goes to the address that was checked (no
  second lookup a DNS answer could change). ``KONDENSE_ALLOW_PRIVATE_DOWNLOADS=1`` allows them, for
  local clusters and tests;
* a **size cap** (``KONDENSE_DOWNLOAD_LIMIT_BYTES``, default 2 GiB), checked against the declared
  length and while reading.

Every failure is a ``BadInputError`` naming the option, the URI and what went wrong.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit, urlunsplit

from kondense.api.uris import UriError, local_path, scheme_of
from kondense.compression.errors import BadInputError

if TYPE_CHECKING:
    import httpx

DEFAULT_PVC_ROOT = "/mnt/pvc"
PVC_ROOT_ENV = "KONDENSE_PVC_ROOT"
ALLOW_PRIVATE_ENV = "KONDENSE_ALLOW_PRIVATE_DOWNLOADS"
DOWNLOAD_LIMIT_ENV = "KONDENSE_DOWNLOAD_LIMIT_BYTES"
DOWNLOAD_DEADLINE_ENV = "KONDENSE_DOWNLOAD_DEADLINE_S"
DEFAULT_DOWNLOAD_LIMIT = 2 * 1024**3  # bytes
DEFAULT_DOWNLOAD_DEADLINE_S = 1800.0  # the whole download, redirects included
READ_TIMEOUT_S = 60.0  # one read or connect; the deadline bounds the sum
MAX_REDIRECTS = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
ALL_NETWORKS = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _allowed_networks_from_env() -> tuple[Network, ...]:
    """``KONDENSE_ALLOW_PRIVATE_DOWNLOADS``: 1/true/yes/on allows every address; a comma-separated
    list of networks (``10.20.0.0/16,127.0.0.0/8``) allows only those besides public ones."""
    text = os.environ.get(ALLOW_PRIVATE_ENV, "").strip()
    if not text or text.lower() in ("0", "false", "no", "off"):
        return ()
    if text.lower() in ("1", "true", "yes", "on"):
        return ALL_NETWORKS
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()
        )
    except ValueError as exc:
        raise BadInputError(
            ALLOW_PRIVATE_ENV, f"expected 1 or a list of networks such as 10.0.0.0/8: {exc}"
        ) from None


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(name, f"must be a positive number, got {text!r}") from None
    if not value > 0:
        raise BadInputError(name, f"must be a positive number, got {text!r}")
    return value


def address_problem(address: str) -> str | None:
    """Why a download may not connect to ``address`` (None: a globally routable address).

    IPv4 addresses inside IPv6 (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4, Teredo) are
    judged by the IPv4 address they carry.
    """
    try:
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(str(embedded))
            return f"{address} carries {inner}" if inner else None
    for test, kind in (
        (ip.is_unspecified, "an unspecified"),
        (ip.is_loopback, "a loopback"),
        (ip.is_link_local, "a link-local"),
        (ip.is_multicast, "a multicast"),
        (ip.is_reserved, "a reserved"),
        (ip.is_private, "a private"),
        (not ip.is_global, "a non-global"),
    ):
        if test:
            return f"{ip} is {kind} address"
    return None


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class DownloadPolicy:
    """What a download may do; the defaults come from the environment of the Job."""

    limit_bytes: int = field(
        default_factory=lambda: int(_env_number(DOWNLOAD_LIMIT_ENV, DEFAULT_DOWNLOAD_LIMIT))
    )
    deadline_s: float = field(
        default_factory=lambda: _env_number(DOWNLOAD_DEADLINE_ENV, DEFAULT_DOWNLOAD_DEADLINE_S)
    )
    read_timeout_s: float = READ_TIMEOUT_S
    # non-public networks downloads may reach anyway (ALL_NETWORKS: everything, for local clusters)
    allowed_networks: tuple[Network, ...] = field(default_factory=_allowed_networks_from_env)
    max_redirects: int = MAX_REDIRECTS
    resolve: Resolver = system_resolver
    verify: ssl.SSLContext | bool = True  # TLS verification (a context: trust a private CA)

    def refusal(self, address: str) -> str | None:
        """Why this policy refuses ``address`` (None: allowed)."""
        problem = address_problem(address)
        if problem is None or not self.allowed_networks:
            return problem
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return problem
        return (
            None if any(ip in net for net in self.allowed_networks if net.version == ip.version) else problem
        )


def _default_pvc_root() -> Path:
    return Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))


@dataclass(frozen=True)
class UriResolver:
    pvc_root: Path = field(default_factory=_default_pvc_root)
    download_dir: Path | None = None
    download_limit: int | None = None  # overrides the policy's size cap
    policy: DownloadPolicy = field(default_factory=DownloadPolicy)

    def local_path(self, uri: str, where: str) -> Path:
        """The local path a URI names (no download); http(s) is not a local path."""
        if scheme_of(uri) not in ("", "file", "pvc"):
            raise BadInputError(
                where,
                f"unsupported URI scheme {scheme_of(uri)!r} in {uri}; use file://, pvc:// or http(s)://",
            )
        try:
            return Path(local_path(uri, str(self.pvc_root)))
        except UriError as exc:
            raise BadInputError(where, str(exc)) from None

    def fetch(self, uri: str, where: str) -> Path:
        """A readable local file for ``uri`` (downloading http(s) into ``download_dir``)."""
        if scheme_of(uri) in ("http", "https"):
            return self._download(uri, where)
        path = self.local_path(uri, where)
        if not path.is_file():
            raise BadInputError(where, f"cannot read {uri}: {path} is not a file")
        if not os.access(path, os.R_OK):
            raise BadInputError(where, f"cannot read {uri}: permission denied")
        return path

    def _download(self, uri: str, where: str) -> Path:
        if self.download_dir is None:
            raise BadInputError(where, "http(s) URIs need a download directory")
        name = PurePosixPath(urlsplit(uri).path).name or "download"
        target = self.download_dir / f"{where.strip('-').replace('/', '_')}-{name}"
        try:
            _Download(uri, where, self.policy, self.download_limit).into(target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target


class _Download:
    def __init__(self, uri: str, where: str, policy: DownloadPolicy, limit: int | None) -> None:
        self.uri, self.where, self.policy = uri, where, policy
        self.limit = policy.limit_bytes if limit is None else limit
        self.deadline = time.monotonic() + policy.deadline_s

    def fail(self, problem: str) -> BadInputError:
        return BadInputError(self.where, f"cannot download {self.uri}: {problem}")

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.fail(f"not finished within the {self.policy.deadline_s:g} s download deadline")
        return left

    def into(self, target: Path) -> None:
        import httpx

        url = self.uri
        with httpx.Client(trust_env=False, follow_redirects=False, verify=self.policy.verify) as client:
            for _hop in range(self.policy.max_redirects + 1):
                request = self._pinned_request(client, url)
                try:
                    response = client.send(request, stream=True)
                except httpx.TimeoutException:
                    raise self.fail(f"no answer from {urlsplit(url).netloc} in time") from None
                except httpx.HTTPError as exc:
                    raise self.fail(f"{type(exc).__name__}: {exc}") from None
                try:
                    if response.status_code in REDIRECT_CODES:
                        url = self._redirect(url, response.headers.get("location"))
                        continue
                    if response.status_code != 200:
                        raise self.fail(f"HTTP {response.status_code} from {url}")
                    self._save(response, target)
                    return
                finally:
                    response.close()
        raise self.fail(f"more than {self.policy.max_redirects} redirects")

    def _redirect(self, url: str, location: str | None) -> str:
        if not location:
            raise self.fail(f"redirect from {url} without a Location")
        following = urljoin(url, location)
        old, new = scheme_of(url), scheme_of(following)
        if new not in ("http", "https"):
            raise self.fail(f"redirect to {following}: only http(s) is followed")
        if old == "https" and new == "http":
            raise self.fail(f"refusing the redirect from https to plain http ({following})")
        return following

    def _resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses; the lookup is bounded too (getaddrinfo has no timeout of its own)."""
        outcome: list[list[str] | BaseException] = []

        def lookup() -> None:
            try:
                outcome.append(self.policy.resolve(host, port))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        worker = threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True)
        worker.start()
        worker.join(min(self.policy.read_timeout_s, self.remaining()))
        if not outcome:
            raise self.fail(f"looking up {host} took too long")
        result = outcome[0]
        if isinstance(result, OSError | UnicodeError):
            raise self.fail(f"cannot resolve {host}: {result}")
        if isinstance(result, BaseException):
            raise result
        return result

    def _pinned_request(self, client: httpx.Client, url: str) -> httpx.Request:
        """A request to the checked address of ``url``'s host, with the original Host and TLS name."""
        import httpx

        parts = urlsplit(url)
        host = parts.hostname
        if not host or parts.username or parts.password:
            raise self.fail(f"{url} needs a host name and no user:password@")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise self.fail(f"{url} has an invalid port") from None
        addresses = self._resolve(host, port)
        if not addresses:
            raise self.fail(f"{host} resolves to no address")
        for address in addresses:
            problem = self.policy.refusal(address)
            if problem:
                raise self.fail(
                    f"{host} resolves to {problem}; downloads go only to public addresses "
                    f"(set {ALLOW_PRIVATE_ENV}=1, or to a list of networks, to allow others, "
                    "e.g. on a local cluster)"
                )
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        pinned = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
        timeout = min(self.policy.read_timeout_s, self.remaining())
        return client.build_request(
            "GET",
            pinned,
            headers={"Host": parts.netloc.rsplit("@", 1)[-1]},
            timeout=httpx.Timeout(timeout),
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        )

    def _save(self, response: httpx.Response, target: Path) -> None:
        import httpx

        try:
            declared = int(response.headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        if declared > self.limit:
            raise self.fail(f"it is {declared} bytes, over the {self.limit}-byte limit")
        received = 0
        try:
            with open(target, "wb") as fh:
                for chunk in response.iter_bytes():
                    received += len(chunk)
                    if received > self.limit:
                        raise self.fail(f"it exceeds the {self.limit}-byte limit")
                    self.remaining()  # the total deadline, checked between reads
                    fh.write(chunk)
        except httpx.TimeoutException:
            raise self.fail(f"stalled: no data for {self.policy.read_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise self.fail(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise BadInputError(self.where, f"cannot save {self.uri}: {exc.strerror or exc}") from None
