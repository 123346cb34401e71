"""Resolve model/data URIs to local files: ``file://`` (or a plain path), ``pvc://claim/path`` (a
mounted volume at ``<pvc root>/<claim>/<path>``) and ``http(s)://`` (downloaded with a size limit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from kondense.compression.errors import BadInputError

DEFAULT_PVC_ROOT = "/mnt/pvc"
PVC_ROOT_ENV = "KONDENSE_PVC_ROOT"
DEFAULT_DOWNLOAD_LIMIT = 2 * 1024**3  # bytes
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class UriResolver:
    pvc_root: Path = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))
    download_dir: Path | None = None
    download_limit: int = DEFAULT_DOWNLOAD_LIMIT

    def local_path(self, uri: str, where: str) -> Path:
        """The local path a URI names (no download); http(s) is not a local path."""
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
                raise BadInputError(where, f"file:// URI with a host is not supported: {uri}")
            return Path(unquote(parsed.path) if parsed.scheme else uri)
        if parsed.scheme == "pvc":
            claim, rel = parsed.netloc, PurePosixPath(unquote(parsed.path).lstrip("/"))
            if not claim or not rel.parts or ".." in rel.parts:
                raise BadInputError(where, f"expected pvc://<claim>/<path> without '..', got {uri}")
            return self.pvc_root / claim / rel
        raise BadInputError(
            where, f"unsupported URI scheme {parsed.scheme!r} in {uri}; use file://, pvc:// or http(s)://"
        )

    def fetch(self, uri: str, where: str) -> Path:
        """A readable local file for ``uri`` (downloading http(s) into ``download_dir``)."""
        parsed = urlparse(uri)
        if parsed.scheme in ("http", "https"):
            return self._download(uri, where)
        path = self.local_path(uri, where)
        if not path.is_file():
            raise BadInputError(where, f"cannot read {uri}: {path} is not a file")
        if not os.access(path, os.R_OK):
            raise BadInputError(where, f"cannot read {uri}: permission denied")
        return path

    def _download(self, uri: str, where: str) -> Path:
        import httpx

        if self.download_dir is None:
            raise BadInputError(where, "http(s) URIs need a download directory")
        name = PurePosixPath(urlparse(uri).path).name or "download"
        target = self.download_dir / f"{where.replace('/', '_')}-{name}"
        try:
            with httpx.stream("GET", uri, follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_S) as response:
                if response.status_code != 200:
                    raise BadInputError(where, f"cannot read {uri}: HTTP {response.status_code}")
                declared = int(response.headers.get("content-length") or 0)
                if declared > self.download_limit:
                    raise BadInputError(
                        where, f"{uri} is {declared} bytes, over the {self.download_limit}-byte limit"
                    )
                received = 0
                with open(target, "wb") as fh:
                    for chunk in response.iter_bytes():
                        received += len(chunk)
                        if received > self.download_limit:
                            raise BadInputError(where, f"{uri} exceeds the {self.download_limit}-byte limit")
                        fh.write(chunk)
        except httpx.HTTPError as exc:
            target.unlink(missing_ok=True)
            raise BadInputError(where, f"cannot read {uri}: {type(exc).__name__}: {exc}") from exc
        except BadInputError:
            target.unlink(missing_ok=True)
            raise
        return target
