"""What ships: the `kondense` wheel (no local cluster in it), the `kondense-localcluster` wheel, the
`kondense.commands` entry points, and the hashed lock files the three images install.

The wheels are built for real (``python -m build --no-isolation``, the project's own hatchling) and
their file lists and metadata read back.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as _canonicalize
from packaging.version import Version


def canonicalize_name(name: str) -> str:
    return str(_canonicalize(name))


REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCALCLUSTER_PYPROJECT = tomllib.loads((REPO / "localcluster" / "pyproject.toml").read_text())
AREAS = {"api", "compression", "serving", "operator", "triton", "loadgen", "dashboard"}
LOCKS = ("operator", "compression", "serving")
# What the images run on (requirements/lock.py resolves with it): markers are evaluated for it.
IMAGE_ENVIRONMENT = {
    "python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
}  # fmt: skip


def build_wheel(project: Path, out: Path, kind: str = "wheel") -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", str(out), str(project)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("*.whl" if kind == "wheel" else "*.tar.gz")
    return built


@pytest.fixture(scope="module")
def kondense_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(REPO, tmp_path_factory.mktemp("kondense-wheel"))


@pytest.fixture(scope="module")
def localcluster_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(REPO / "localcluster", tmp_path_factory.mktemp("localcluster-wheel"))


def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def wheel_text(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(f".dist-info/{suffix}")]
        return archive.read(name).decode()


def entry_points(wheel: Path, group: str) -> dict[str, str]:
    text = wheel_text(wheel, "entry_points.txt")
    section = re.search(rf"^\[{re.escape(group)}\]\n(.*?)(?:^\[|\Z)", text, re.M | re.S)
    assert section, f"no [{group}] in {wheel.name}'s entry_points.txt"
    pairs = (line.split("=", 1) for line in section.group(1).splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def requires_dist(wheel: Path) -> list[Requirement]:
    message = email.parser.Parser().parsestr(wheel_text(wheel, "METADATA"))
    return [Requirement(r) for r in message.get_all("Requires-Dist") or []]


# ---- the kondense wheel ---------------------------------------------------------------------------------


def test_kondense_wheel_has_every_area_and_no_local_cluster(kondense_wheel: Path) -> None:
    files = wheel_files(kondense_wheel)
    code = [f for f in files if not f.startswith("kondense-")]  # minus the .dist-info
    assert [f for f in files if "localcluster" in f.lower()] == []
    assert "kondense/cli.py" in code
    for package in ("api", "operator", "triton", "loadgen", "compression", "serving"):
        assert f"kondense/{package}/__init__.py" in code or any(
            f.startswith(f"kondense/{package}/") for f in code
        ), package
    assert all(f.startswith("kondense/") for f in code), [f for f in code if not f.startswith("kondense/")]


def test_kondense_wheel_registers_its_areas_and_needs_no_local_cluster_packages(kondense_wheel: Path) -> None:
    commands = entry_points(kondense_wheel, "kondense.commands")
    assert set(commands) == AREAS
    assert all(value == f"kondense.{name}.cli:register" for name, value in commands.items())
    assert entry_points(kondense_wheel, "console_scripts") == PYPROJECT["project"]["scripts"]
    requirements = requires_dist(kondense_wheel)
    runtime = {
        canonicalize_name(r.name) for r in requirements if not r.marker or "extra" not in str(r.marker)
    }
    by_extra = {
        extra: {
            canonicalize_name(r.name)
            for r in requirements
            if r.marker and r.marker.evaluate({"extra": extra})
        }
        for extra in ("operator", "compression", "serving", "dev")
    }
    local_cluster_only = {"kmock", "kubernetes-validate"}
    for extra in ("operator", "compression", "serving"):
        assert not local_cluster_only & (runtime | by_extra[extra]), extra
    assert "kondense-localcluster" in by_extra["dev"]


def test_kondense_sdist_leaves_the_local_cluster_out(tmp_path: Path) -> None:
    import tarfile

    sdist = build_wheel(REPO, tmp_path, kind="sdist")
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    assert "pyproject.toml" in names and "operator/kondense/cli.py" in names
    assert not [n for n in names if n.startswith("localcluster")]


def test_localcluster_wheel_is_the_local_cluster_only(localcluster_wheel: Path) -> None:
    files = [f for f in wheel_files(localcluster_wheel) if ".dist-info/" not in f]
    assert files and all(f.startswith("kondense/localcluster/") for f in files), files
    assert "kondense/localcluster/data/digits-compressedmodel.yaml" in files  # `kondense demo` from anywhere
    assert "kondense/localcluster/__init__.py" in files and "kondense/__init__.py" not in files  # PEP 420
    assert entry_points(localcluster_wheel, "kondense.commands") == {
        "demo": "kondense.localcluster.cli:register"
    }
    names = {canonicalize_name(r.name): r for r in requires_dist(localcluster_wheel)}
    assert {"kmock", "jsonpatch", "kubernetes-validate", "kondense"} <= set(names)
    assert not names["kmock"].specifier.contains("0.9"), "the kmock adapter is tested against 0.8 only"


# ---- the CLI's areas load with the base dependencies only ---------------------------------------------------


def _distributions_needed(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions behind these requirements, transitively (markers for this machine)."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        requirement, wanted = todo.pop()
        env_extras = wanted or ("",)
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in env_extras):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for child in metadata.requires(name) or []:
            todo.append((Requirement(child), tuple(requirement.extras)))
    return seen


def test_every_area_of_the_kondense_wheel_loads_with_the_base_dependencies_only() -> None:
    """The images install one extra each but get every area's entry point: importing an area's `cli`
    module must need nothing beyond the base dependencies (heavy imports go inside the commands)."""
    allowed_dists = _distributions_needed(PYPROJECT["project"]["dependencies"])
    top_level = metadata.packages_distributions()
    allowed = sorted(
        m for m, dists in top_level.items() if {canonicalize_name(d) for d in dists} & allowed_dists
    )
    blocker = f"""
import importlib.abc, importlib.metadata, sys
ALLOWED = set({allowed!r}) | {{"kondense"}}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in ALLOWED or top in sys.stdlib_module_names or top.startswith("_"):
            return None
        raise ModuleNotFoundError(f"not a base dependency of kondense: {{name}}", name=name)
sys.meta_path.insert(0, Block())
import typer
app = typer.Typer()
loaded = []
for entry in importlib.metadata.entry_points(group="kondense.commands"):
    if entry.dist is not None and entry.dist.name == "kondense":
        entry.load()(app)
        loaded.append(entry.name)
print(" ".join(sorted(loaded)))
"""
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(result.stdout.split()) == AREAS


# ---- lock files --------------------------------------------------------------------------------------------

LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        if match := LOCK_LINE.match(line):
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{path.name}: {current} pinned twice"
            pins[current] = (match.group(2), [])
        elif current and (found := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current][1].append(found.group(1))
        elif line.strip() and not line.lstrip().startswith("#"):
            pytest.fail(f"{path.name}: unexpected line {line!r} (only pins, hashes and comments)")
    return pins


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if match := LOCK_LINE.match(line):
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def image_pins(image: str) -> dict[str, tuple[str, list[str]]]:
    pins = read_lock(REPO / "requirements" / f"{image}.lock")
    if image == "compression":
        torch = read_lock(REPO / "requirements" / "torch-cpu.lock")
        assert set(torch) == {"torch"}
        assert "torch" not in pins, "torch comes from torch-cpu.lock (PyTorch's CPU index) only"
        pins |= torch
    return pins


def extra_requirements(extra: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"][extra]]]


def applies(requirement: Requirement, extra: str = "") -> bool:
    return requirement.marker is None or requirement.marker.evaluate({**IMAGE_ENVIRONMENT, "extra": extra})


@pytest.mark.parametrize("image", LOCKS)
def test_lock_pins_every_runtime_dependency_of_its_extra_with_hashes(image: str) -> None:
    pins = image_pins(image)
    for requirement in extra_requirements(image):
        if not applies(requirement):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements/{image}.lock lacks {requirement} (run `make lock`)"
        version = pins[name][0]
        assert requirement.specifier.contains(Version(version), prereleases=True), (
            f"requirements/{image}.lock pins {name}=={version}, outside pyproject's {requirement}"
        )
    for name, (_version, hashes) in pins.items():
        assert hashes, f"requirements/{image}.lock: {name} has no --hash"
    # the local cluster's own packages (jsonpatch is also a kopf dependency, so it may be here)
    assert not {"kmock", "kubernetes-validate", "pytest", "kondense-localcluster"} & set(pins)


@pytest.mark.parametrize("image", LOCKS)
def test_lock_versions_are_the_tested_ones(image: str) -> None:
    """The images run exactly the versions `make test` ran with (constraints.txt)."""
    tested = constraints()
    for name, (version, _) in image_pins(image).items():
        assert name in tested, f"requirements/{image}.lock: {name} is not pinned in constraints.txt"
        assert Version(version).public == Version(tested[name]).public, (
            f"requirements/{image}.lock: {name}=={version} but constraints.txt has {tested[name]}"
        )


@pytest.mark.parametrize("image", LOCKS)
def test_lock_is_closed_under_dependencies(image: str) -> None:
    """`pip install --no-deps -r` is complete: every dependency of every locked package is locked too
    (read from the installed metadata of the same versions)."""
    pins = image_pins(image)
    missing: list[str] = []
    for name in pins:
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            # the extras a package is installed with in the image: the ones some locked package asks for
            if requirement.marker is not None and "extra" in str(requirement.marker):
                continue
            if applies(requirement) and canonicalize_name(requirement.name) not in pins:
                missing.append(f"{name} -> {requirement}")
    assert not missing, f"requirements/{image}.lock misses dependencies: {missing}"


def test_every_pinned_package_is_exact() -> None:
    lines = [
        line
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines and all(LOCK_LINE.match(line) for line in lines), [
        x for x in lines if not LOCK_LINE.match(x)
    ]
    installed = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions()}
    pinned = set(constraints())
    unpinned = installed - pinned - {"kondense", "kondense-localcluster"}
    assert not unpinned, f"installed but not pinned in constraints.txt: {sorted(unpinned)}"
