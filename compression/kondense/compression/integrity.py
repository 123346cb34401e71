"""What an ONNX artifact is made of, and the pin of the base model.

An ONNX model may keep tensors in external-data files beside it. ``external_data_files`` lists
them (read from the model's protobuf without loading any weights), ``artifact_digest`` (the shared
contract in ``kondense.api.artifacts``) covers the model and all of them, and ``check_base_pin``
refuses a base model whose digest differs from ``spec.baseModel.sha256`` before anything is loaded.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

from kondense.api.artifacts import (
    SHA256_HEX,
    ArtifactPathError,
    artifact_digest,
    artifact_member,
    sha256_file,
)
from kondense.compression.errors import BadInputError


def _node_tensors(nodes: Any) -> Any:
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def _tensors(graph: Any) -> Any:
    """Every TensorProto of a graph: initializers, sparse initializers, attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def external_data_files(model_path: str | Path, where: str | None = None) -> list[str]:
    """The external-data files ``model_path`` references (relative to its directory, sorted).

    Only the protobuf is parsed (no weights are read); a location outside the model's directory is
    a ``BadInputError``.
    """
    import onnx
    from google.protobuf.message import DecodeError

    model_path = Path(model_path)
    where = where or str(model_path)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise BadInputError(where, f"not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    names: set[str] = set()
    functions = (node for function in model.functions for node in function.node)
    for tensor in itertools.chain(_tensors(model.graph), _node_tensors(functions)):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        try:
            artifact_member(model_path.parent, location)
        except ArtifactPathError as exc:
            raise BadInputError(where, f"tensor {tensor.name!r}: external data {exc}") from None
        names.add(Path(location).as_posix())
    return sorted(names)


def model_bytes(model_path: str | Path) -> int:
    """Bytes of a model on disk: its protobuf plus every external-data file it references (a model
    exported with external data keeps nearly all of its weights beside the ``.onnx`` file)."""
    model_path = Path(model_path)
    return model_path.stat().st_size + sum(
        (model_path.parent / name).stat().st_size for name in external_data_files(model_path)
    )


def digest_of(model_path: Path, external: list[str], where: str) -> str:
    """``artifact_digest`` with a clear error when an external-data file is missing."""
    for name in external:
        if not (model_path.parent / name).is_file():
            raise BadInputError(
                where,
                f"external-data file {name!r} of the model is missing beside it (an http(s) download "
                "fetches only the model file; keep such models on a pvc://)",
            )
    return artifact_digest(model_path, external)


def check_sha256_argument(value: str | None, where: str = "--model-sha256") -> str | None:
    if value is None or value == "":
        return None
    if not SHA256_HEX.match(value):
        raise BadInputError(where, f"expected 64 lower-case hex digits (a sha256), got {value[:80]!r}")
    return value


def check_base_pin(model_path: Path, expected: str | None, uri: str, where: str = "--model") -> list[str]:
    """Refuse a base model that is not the pinned one; returns its external-data files.

    The pin is judged first: a model file that cannot even be parsed is reported as not the pinned
    model (when its own sha256 differs from the pin), never parsed further.
    """
    if expected is None:
        return external_data_files(model_path, where)
    try:
        external = external_data_files(model_path, where)
    except BadInputError:
        if sha256_file(model_path) == expected:
            raise  # the pinned file itself is not a readable model: say so
        external = []
    actual = digest_of(model_path, external, where)
    if actual != expected:
        covers = f" (model and {len(external)} external-data file(s))" if external else ""
        raise BadInputError(
            where,
            f"the base model {uri} has sha256 {actual}{covers} but spec.baseModel.sha256 pins "
            f"{expected}; refusing a base model that differs",
        )
    return external


def copy_with_external_data(model_path: Path, external: list[str], destination: Path) -> None:
    """Copy a model and its external-data files (same relative names) to ``destination``."""
    shutil.copyfile(model_path, destination)
    for name in external:
        target = artifact_member(destination.parent, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path.parent / name, target)
