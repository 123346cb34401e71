"""The one rule for the URIs kondense reads and writes (pure; no I/O, no third-party imports).

* ``pvc://CLAIM/PATH``: the file PATH on the PersistentVolumeClaim CLAIM, which the pods that need it
  mount at ``<pvc root>/CLAIM``. CLAIM is a DNS-1123 subdomain (what Kubernetes accepts as a claim
  name); PATH is percent-decoded, relative to the claim's root, and may not contain ``..``, a NUL, a
  query or a fragment. ``pvc://CLAIM`` (no PATH) names the claim's root and is only accepted where a
  directory may be given (``require_path=False``).
* ``file://PATH`` (or ``file://localhost/PATH``) and a plain path: PATH as is (percent-decoded).

The operator (where to mount, what to pass to a pod), the compression Job and the load generator
all resolve URIs through this module, so a URI means the same file everywhere.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PVC_SCHEME = "pvc"
FILE_SCHEME = "file"
# Kubernetes' DNS-1123 subdomain: what a PersistentVolumeClaim name must be.
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_SUBDOMAIN_MAX = 253


class UriError(ValueError):
    """A URI that does not follow the rule; the message names the URI and what is wrong."""


@dataclass(frozen=True)
class PvcUri:
    claim: str
    path: str  # relative POSIX path inside the claim, normalised; "" for the claim's root

    def local_path(self, pvc_root: str) -> str:
        """Where a pod that mounts the claim at ``<pvc_root>/<claim>`` finds the file."""
        return (
            posixpath.join(pvc_root, self.claim, self.path)
            if self.path
            else posixpath.join(pvc_root, self.claim)
        )

    @property
    def uri(self) -> str:
        return f"{PVC_SCHEME}://{self.claim}/{self.path}" if self.path else f"{PVC_SCHEME}://{self.claim}"


def scheme_of(uri: str) -> str:
    """The lower-case scheme ("" for a plain path)."""
    return urlsplit(uri).scheme.lower() if "://" in uri else ""


def _check_common(uri: str) -> None:
    if "\x00" in uri:
        raise UriError(f"{uri!r}: a URI may not contain a NUL character")


def parse_pvc_uri(uri: str, *, require_path: bool = True) -> PvcUri:
    """Split ``pvc://CLAIM/PATH``; anything off the rule is a ``UriError`` saying what."""
    _check_common(uri)
    parts = urlsplit(uri)
    if parts.scheme.lower() != PVC_SCHEME or not uri.lower().startswith("pvc://"):
        raise UriError(f"{uri}: not a pvc:// URI")
    if parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise UriError(f"{uri}: a pvc:// URI has no query or fragment ('?' or '#')")
    claim = parts.netloc
    if not claim:
        raise UriError(f"{uri}: expected pvc://CLAIM/PATH, the claim name is missing")
    if len(claim) > DNS1123_SUBDOMAIN_MAX or not DNS1123_SUBDOMAIN.match(claim):
        raise UriError(
            f"{uri}: claim {claim!r} is not a PersistentVolumeClaim name "
            "(lower-case letters, digits, '-' and '.', starting and ending alphanumeric)"
        )
    raw = unquote(parts.path)
    if "\x00" in raw:
        raise UriError(f"{uri}: the path may not contain a NUL character")
    segments = [s for s in raw.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise UriError(f"{uri}: the path may not contain '..'")
    if require_path and not segments:
        raise UriError(f"{uri}: expected pvc://CLAIM/PATH, the path inside the claim is missing")
    return PvcUri(claim, "/".join(segments))


def file_uri_path(uri: str) -> str:
    """The path of ``file://PATH`` (host empty or ``localhost``) or of a plain path."""
    _check_common(uri)
    if scheme_of(uri) == "":
        return uri
    parts = urlsplit(uri)
    if parts.scheme.lower() != FILE_SCHEME:
        raise UriError(f"{uri}: not a file:// URI")
    if parts.netloc not in ("", "localhost"):
        raise UriError(f"{uri}: a file:// URI with a host ({parts.netloc}) is not supported")
    if parts.query or parts.fragment:
        raise UriError(f"{uri}: a file:// URI has no query or fragment ('?' or '#')")
    path = unquote(parts.path)
    if not path or "\x00" in path:
        raise UriError(f"{uri}: expected file:///PATH")
    return path


def local_path(uri: str, pvc_root: str, *, require_path: bool = True) -> str:
    """The path a pod sees for a ``pvc://``, ``file://`` or plain-path URI (no I/O)."""
    scheme = scheme_of(uri)
    if scheme == PVC_SCHEME:
        return parse_pvc_uri(uri, require_path=require_path).local_path(pvc_root)
    if scheme in ("", FILE_SCHEME):
        return file_uri_path(uri)
    raise UriError(f"{uri}: unsupported scheme {scheme!r} here; use pvc:// or file://")


def check_uri(uri: str) -> str:
    """Validate a URI of the resource (pvc:// by the rule above); returns it unchanged."""
    scheme = scheme_of(uri)
    if scheme == PVC_SCHEME:
        parse_pvc_uri(uri, require_path=False)
    elif scheme == FILE_SCHEME:
        file_uri_path(uri)
    return uri
