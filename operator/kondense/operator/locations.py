"""Where data and artifacts live, for the pods that read and write them (pure).

`pvc://CLAIM/PATH` is mounted from the PersistentVolumeClaim CLAIM at `<pvcRoot>/CLAIM`;
`file://PATH` is used as is (a path in the image or on the node); `http(s)://` is fetched by the Job.

Artifacts: each compression run (one spec, one run id recorded in status before its Jobs exist) gets
its own directory `<root>/<run>/`, and each Job of the run its own `<run>/<variant>/` (the only
directory the Job can write, mounted with `subPath`); the artifact is `<run>/<variant>/artifact/`.
A spec change A -> B -> A is a new run: a directory that may be served is never written again.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kondense.api.resource import CompressedModelSpec
from kondense.api.uris import UriError, local_path, parse_pvc_uri


class LocationError(ValueError):
    pass


@dataclass(frozen=True)
class Location:
    uri: str

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme

    @property
    def claim(self) -> str | None:
        if self.scheme != "pvc":
            return None
        try:  # the one pvc:// rule (kondense.api.uris), as the Job and loadgen apply it
            return parse_pvc_uri(self.uri, require_path=False).claim
        except UriError as exc:
            raise LocationError(str(exc)) from None

    def local_path(self, pvc_root: str) -> str:
        if self.scheme not in ("pvc", "file"):
            raise LocationError(f"{self.uri}: only pvc:// and file:// locations can be mounted")
        try:
            return local_path(self.uri, pvc_root, require_path=False)
        except UriError as exc:
            raise LocationError(str(exc)) from None

    def child(self, *names: str) -> Location:
        return Location(self.uri.rstrip("/") + "/" + "/".join(names))

    def subpath(self) -> str:
        """The path inside its claim, as a volumeMount `subPath` (relative, no `..`, no empty part)."""
        if self.scheme != "pvc":
            raise LocationError(f"{self.uri}: only a pvc:// location has a path inside a claim")
        path = urlsplit(self.uri).path.strip("/")
        parts = path.split("/")
        if not path or any(p in ("", ".", "..") for p in parts):
            raise LocationError(
                f"{self.uri}: the path inside the claim must not be empty or hold '.', '..' or '//'"
            )
        return path


ARTIFACT_DIR = "artifact"  # inside a Job's own directory: the artifact (model.onnx + manifest.json)


def artifacts_root(spec: CompressedModelSpec, namespace: str, name: str) -> Location:
    if spec.artifacts is not None:
        return Location(spec.artifacts.uri).child(namespace, name)
    base = spec.baseModel.uri
    if not base.startswith(("pvc://", "file://")):
        raise LocationError("an http(s) base model needs spec.artifacts")
    return Location(posixpath.dirname(base.rstrip("/"))).child("kondense", namespace, name)


def job_directory(spec: CompressedModelSpec, namespace: str, name: str, run: str, variant: str) -> Location:
    """The one directory the Job of ``variant`` in compression run ``run`` may write."""
    location = artifacts_root(spec, namespace, name).child(run, variant)
    if location.scheme == "pvc":
        location.subpath()  # refuse '..' and friends before anything is mounted
    elif ".." in location.uri.split("/"):
        raise LocationError(f"{location.uri}: '..' is not allowed in an artifacts location")
    return location


def variant_location(
    spec: CompressedModelSpec, namespace: str, name: str, run: str, variant: str
) -> Location:
    """Where the artifact of ``variant`` in compression run ``run`` is (what status records)."""
    return job_directory(spec, namespace, name, run, variant).child(ARTIFACT_DIR)


def claims(*uris: str | None) -> list[str]:
    out: list[str] = []
    for uri in uris:
        if uri:
            claim = Location(uri).claim
            if claim and claim not in out:
                out.append(claim)
    return out


def pvc_volumes(
    claim_names: list[str], pvc_root: str, read_only: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts) for the claims."""
    volumes, mounts = [], []
    for i, claim in enumerate(claim_names):
        volume = f"pvc-{i}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": volume, "mountPath": posixpath.join(pvc_root, claim), "readOnly": read_only})
    return volumes, mounts
