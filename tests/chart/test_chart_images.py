"""The three images `make images` builds: linted by hadolint, slim, non-root, no build tools in the
final stage, CPU-only torch, every package from a hashed lock file, no local-cluster code, and the
matching console script as ENTRYPOINT.

No container engine runs here, so these are static checks with the real Dockerfile parser
(buildkit's, via the `dockerfile` package) and hadolint.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from typing import Any

import dockerfile
import pytest
from chart_support import REPO, find_tool, run

# Dockerfile -> the console script its ENTRYPOINT runs (pyproject [project.scripts]).
IMAGES = {
    "operator/Dockerfile": "kondense",
    "compression/Dockerfile": "kondense-compress",
    "serving/Dockerfile": "kondense",
}
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cargo|rustc|git)\b")


def parse(path: str) -> list[Any]:
    file = REPO / path
    if not file.is_file():
        pytest.fail(f"{path} is missing: `make images` builds it (context = repository root)")
    return list(dockerfile.parse_file(str(file)))


def final_stage(commands: list[Any]) -> list[Any]:
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    assert starts, "no FROM"
    return commands[starts[-1] :]


def resolve_args(commands: list[Any], value: str) -> str:
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


@pytest.mark.parametrize("path", IMAGES)
def test_hadolint_clean(path: str) -> None:
    parse(path)
    hadolint = find_tool("hadolint")
    result = run([hadolint, "--no-color", str(REPO / path)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", IMAGES)
def test_final_stage_is_slim_non_root_and_runs_the_console_script(path: str) -> None:
    commands = parse(path)
    final = final_stage(commands)
    base = resolve_args(commands, final[0].value[0])
    assert re.match(r"^(docker\.io/)?(library/)?python:[\w.-]*slim[\w.-]*(@sha256:[0-9a-f]{64})?$", base), (
        base
    )

    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, f"{path}: the final stage sets no USER (runs as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{path}: final USER is {users[-1]}"
    # Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
    assert user.isdigit(), f"{path}: USER {users[-1]} should be numeric"

    (entrypoint,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json, f"{path}: ENTRYPOINT must be exec form"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint.value[0] == IMAGES[path] and IMAGES[path] in scripts

    for command in final:
        if command.cmd == "RUN":
            assert not BUILD_TOOLS.search(" ".join(command.value)), (
                f"{path}: build tools in final stage: {command.original}"
            )


@pytest.mark.parametrize("path", IMAGES)
def test_copied_sources_are_in_the_build_context(path: str) -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for command in parse(path):
        if command.cmd not in ("COPY", "ADD") or any(f.startswith("--from") for f in command.flags):
            continue
        for source in command.value[:-1]:
            assert (REPO / source).exists(), f"{path}: COPY {source} does not exist"
            for pattern in ignored:
                hit = fnmatch.fnmatch(source, pattern) or source.startswith(pattern + "/")
                assert not hit, f"{path}: COPY {source} is excluded by .dockerignore pattern {pattern!r}"


def test_compression_image_installs_cpu_torch() -> None:
    commands = parse("compression/Dockerfile")
    runs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert re.search(
        r"--index-url[= ]https://download\.pytorch\.org/whl/cpu -r requirements/torch-cpu\.lock", runs
    ), "compression/Dockerfile must install requirements/torch-cpu.lock from the CPU index"
    pins = (REPO / "requirements" / "torch-cpu.lock").read_text()
    assert re.search(r"^torch==[\d.]+\+cpu \\$", pins, re.M), "torch-cpu.lock must pin the +cpu build"


PIP_INSTALL = re.compile(r"(\S*pip) install ([^&;]*)")


@pytest.mark.parametrize("path", IMAGES)
def test_every_package_comes_hash_checked_from_the_lock_files(path: str) -> None:
    """pip resolves nothing at build time: third-party packages come from requirements/*.lock with
    --require-hashes --no-deps; the only other install is the kondense wheel built from the context."""
    image = path.split("/")[0]
    commands = parse(path)
    runs = [" ".join(c.value) for c in commands if c.cmd == "RUN"]
    installs = [(m.group(1), m.group(2).split()) for run in runs for m in PIP_INSTALL.finditer(run)]
    assert installs, f"{path}: no pip install"
    locks = []
    for pip, args in installs:
        if "-r" in args:
            assert {"--require-hashes", "--no-deps"} <= set(args), f"{path}: {pip} install {' '.join(args)}"
            lock = args[args.index("-r") + 1]
            assert re.fullmatch(r"requirements/[\w-]+\.lock", lock), lock
            assert (REPO / lock).is_file(), f"{path}: {lock} does not exist"
            locks.append(lock)
        else:
            assert {"--no-deps", "--no-index"} <= set(args), (
                f"{path}: unlocked {pip} install {' '.join(args)}"
            )
            assert [a for a in args if not a.startswith("-")] == ["/tmp/wheels/kondense-*.whl"], args
    assert f"requirements/{image}.lock" in locks
    assert "requirements/build.lock" in locks  # the build backend the wheel is built with
    copied = [src for c in commands if c.cmd == "COPY" for src in c.value[:-1]]
    assert set(locks) <= set(copied), f"{path}: installs a lock file it does not COPY"


@pytest.mark.parametrize("path", IMAGES)
def test_images_contain_no_local_cluster_code(path: str) -> None:
    """Only the kondense distribution's source roots go in; the local cluster (localcluster/, its own
    distribution) never does, and the build context itself leaves it out."""
    for command in parse(path):
        if command.cmd not in ("COPY", "ADD") or any(f.startswith("--from") for f in command.flags):
            continue
        for source in command.value[:-1]:
            assert source not in {".", "./", "*"}, f"{path}: copies the whole context"
            assert "localcluster" not in source, f"{path}: COPY {source}"
            assert source.split("/")[0] in {
                "pyproject.toml",
                "README.md",
                "requirements",
                "operator",
                "compression",
                "serving",
            }, source
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert "localcluster/" in ignored


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git/", ".venv/", "examples/models/", "tests/", "localcluster/"} <= ignored
    assert not {"pyproject.toml", "README.md", "requirements/"} & ignored


def test_operator_image_matches_the_chart() -> None:
    """The chart's probes and metrics ports are the ones the image exposes; CMD is a sane default."""
    final = final_stage(parse("operator/Dockerfile"))
    exposed = {int(p) for c in final if c.cmd == "EXPOSE" for p in c.value}
    assert exposed == {8080, 8000}
    (cmd,) = [c for c in final if c.cmd == "CMD"]
    assert list(cmd.value) == ["operator", "--all-namespaces"]


def test_serving_image_defaults_are_the_operators_pods() -> None:
    """`docker run kondense-serving` serves what the operator's pods serve: REST on the CRD's default
    port and gRPC next to it (the Services' ports), with flags `kondense serve` knows."""
    import subprocess
    import sys

    from kondense.api.resource import ServingSpec
    from kondense.operator.objects import grpc_port

    final = final_stage(parse("serving/Dockerfile"))
    http = ServingSpec.model_fields["port"].default
    exposed = {int(p) for c in final if c.cmd == "EXPOSE" for p in c.value}
    assert exposed == {http, grpc_port(http)}
    (cmd,) = [c for c in final if c.cmd == "CMD"]
    assert cmd.json, "CMD must be exec form"
    args = list(cmd.value)
    assert args[0] == "serve"
    assert args[args.index("--port") + 1] == str(http)
    assert args[args.index("--grpc-port") + 1] == str(grpc_port(http))
    usage = subprocess.run(
        [sys.executable, "-m", "kondense.cli", "serve", "--help"],
        capture_output=True, text=True, check=True, env={"COLUMNS": "200", "PATH": ""},
    ).stdout  # fmt: skip
    unknown = [a for a in args if a.startswith("--") and a not in usage]
    assert not unknown, f"serving/Dockerfile CMD passes flags `kondense serve` does not know: {unknown}"


def test_serving_image_gives_onnx_runtime_huge_pages() -> None:
    """glibc's malloc asks for transparent huge pages (hugetlb=1) in one arena (arena_max=1: weights
    loaded on a worker thread too), on a base whose glibc knows the tunable (2.35+: Debian 12 and
    later); the benchmark runs every system with the same value (benchmarks/serving.py)."""
    commands = parse("serving/Dockerfile")
    final = final_stage(commands)
    env: dict[str, str] = {}
    for command in final:
        if command.cmd == "ENV":
            values = list(command.value)
            env.update(zip(values[::2], values[1::2], strict=True))
    tunables = dict(item.split("=", 1) for item in env.get("GLIBC_TUNABLES", "").split(":") if item)
    assert tunables == {"glibc.malloc.hugetlb": "1", "glibc.malloc.arena_max": "1"}, env
    base = resolve_args(commands, final[0].value[0])
    assert re.search(r"-(bookworm|trixie|forky)\b", base), f"{base}: glibc older than 2.35 ignores hugetlb"

    from kondense_testing.benchmarks import load_benchmark

    benchmark = load_benchmark("serving")
    assert benchmark.image_env() == {"GLIBC_TUNABLES": env["GLIBC_TUNABLES"]}
