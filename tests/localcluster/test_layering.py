"""kondense-localcluster's layout: a generic Kubernetes half that knows nothing of kondense, the kondense
scenarios on top of it, and the example the demo applies shipped with the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kondense.localcluster
from kondense.localcluster.demo import example_cr_file

PACKAGE = Path(kondense.localcluster.__file__).parent
REPO = Path(__file__).resolve().parents[2]

# API server, client, controllers, kubelet, Services, Prometheus: what a Kubernetes node and control
# plane do, for any workload.
GENERIC = {
    "apiserver", "emulator", "patching", "selectors", "structural", "client", "controllers",
    "kubelet", "services", "prometheus", "namespacepaths", "discovery", "openapi", "tables", "validation",
}  # fmt: skip
# kondense on the local cluster: the CRD and operator process, the scenarios, the demo's displays and CLI.
KONDENSE = {"cluster", "scenarios", "demo", "cli"}
# `kondense up`: the API's objects on disk and protobuf request bodies (generic); the daemon (kondense)
GENERIC |= {"store", "protobuf"}
KONDENSE |= {"up"}


def _kondense_imports(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        else:
            continue
        names |= {name for name in found if name.split(".")[0] == "kondense"}
    return names


def test_every_module_is_on_one_side() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == GENERIC | KONDENSE, "place a new module in GENERIC or KONDENSE (and in the README)"


def test_the_generic_half_imports_no_kondense_code() -> None:
    allowed = {"kondense.localcluster"} | {f"kondense.localcluster.{m}" for m in GENERIC}
    for name in sorted(GENERIC | {"__init__"}):
        imports = _kondense_imports(PACKAGE / f"{name}.py")
        outside = {i for i in imports if i not in allowed and i.rsplit(".", 1)[0] not in allowed}
        assert not outside, f"kondense.localcluster.{name} imports {sorted(outside)}"


def test_the_generic_half_loads_without_kondense_installed() -> None:
    """In a fresh interpreter, importing the API server, kubelet, controllers and Services pulls in no
    kondense module outside the generic half (the CRD, the operator and the scenarios stay unloaded)."""
    code = (
        "import sys\n"
        + "".join(f"import kondense.localcluster.{m}\n" for m in sorted(GENERIC))
        + "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('kondense'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert loaded <= {"kondense", "kondense.localcluster"} | {f"kondense.localcluster.{m}" for m in GENERIC}


def test_the_demo_applies_the_packaged_example_identical_to_the_repository_one() -> None:
    with example_cr_file() as path:
        assert path.is_file()
        assert path.read_bytes() == (REPO / "examples" / "digits" / "compressedmodel.yaml").read_bytes(), (
            "localcluster/kondense/localcluster/data/ is a copy of examples/digits/compressedmodel.yaml: copy it again"
        )


def test_kondense_demo_finds_its_example_from_any_directory(tmp_path: Path) -> None:
    """`kondense demo` with no --file resolves the packaged CR outside the repository; --list proves the
    command is installed, a missing --file is a clear error that names the flag."""
    kondense = Path(sys.executable).parent / "kondense"
    listed = subprocess.run([str(kondense), "demo", "--list"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "happy" in listed.stdout
    missing = subprocess.run(
        [str(kondense), "demo", "--file", "nope.yaml", "--plain"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "--file nope.yaml: no such file" in missing.stdout
    assert "Traceback" not in missing.stdout + missing.stderr
