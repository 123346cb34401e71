"""The repository's maintenance files: GitHub Actions workflows and dependabot.yml validated against
SchemaStore's schemas (check-jsonschema ships them), plus the facts the schemas cannot know: actions
pinned to a release, every `make` target a workflow runs exists, the images built on the architectures
they ship for, pre-commit at the versions constraints.txt pins, a CHANGELOG entry for this version.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")
DOCKERFILES = {"operator", "compression", "serving"}


def check(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--builtin-schema", schema, *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def load(path: Path) -> Any:
    # YAML 1.1 reads the `on:` key as True; GitHub reads it as "on"
    return yaml.load(path.read_text(), Loader=yaml.BaseLoader)


def steps() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in WORKFLOWS:
        for job in load(path)["jobs"].values():
            found += [(path.name, step) for step in job.get("steps", [])]
    return found


def test_there_are_ci_and_release_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}


def test_workflows_and_dependabot_pass_schemastore_schemas() -> None:
    result = check("vendor.github-workflows", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    result = check("vendor.dependabot", REPO / ".github" / "dependabot.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  test:\n    steps:\n      - uses: actions/checkout@v4\n"
    )  # no runs-on
    result = check("vendor.github-workflows", broken)
    assert result.returncode != 0
    assert "runs-on" in result.stdout + result.stderr


def test_actions_are_pinned_to_a_release() -> None:
    for name, step in steps():
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", step["uses"]), (
                f"{name}: {step['uses']} is not pinned to a release tag or commit"
            )


def test_every_make_target_a_workflow_runs_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    used = set()
    for _, step in steps():
        for command in re.findall(r"\bmake ((?:[\w-]+ ?)+)", step.get("run", "")):
            used |= set(command.split())
    assert used and used <= targets, f"unknown make targets: {sorted(used - targets)}"
    assert any(".ci/run" in step.get("run", "") for _, step in steps()), "CI runs what .ci/run runs"


@pytest.mark.parametrize("workflow", ["ci.yml", "release.yml"])
def test_the_three_images_are_built_for_their_architectures(workflow: str) -> None:
    jobs = load(REPO / ".github" / "workflows" / workflow)["jobs"]
    matrix = jobs["images"]["strategy"]["matrix"]["include"]
    platforms = {entry["image"]: set(entry["platforms"].split(",")) for entry in matrix}
    assert set(platforms) == DOCKERFILES
    assert all((REPO / image / "Dockerfile").is_file() for image in platforms)
    for image in ("operator", "serving"):
        assert platforms[image] == {"linux/amd64", "linux/arm64"}, image
    # torch-cpu.lock decides: arm64 joins once its wheel's hash is in the lock
    torch_hashes = (REPO / "requirements" / "torch-cpu.lock").read_text().count("--hash=sha256:")
    assert platforms["compression"] == (
        {"linux/amd64", "linux/arm64"} if torch_hashes > 1 else {"linux/amd64"}
    )
    build = next(
        s for s in jobs["images"]["steps"] if s.get("uses", "").startswith("docker/build-push-action")
    )
    assert build["with"]["file"] == "${{ matrix.image }}/Dockerfile"
    assert build["with"]["push"] == ("true" if workflow == "release.yml" else "false")


def test_release_publishes_the_chart_on_a_tag() -> None:
    release = load(REPO / ".github" / "workflows" / "release.yml")
    assert release["on"]["push"]["tags"] == ["v*.*.*"]
    runs = " ".join(step.get("run", "") for _, step in steps())
    assert "helm package charts/kondense" in runs and "helm push" in runs


def test_dependabot_watches_pip_actions_and_docker() -> None:
    updates = load(REPO / ".github" / "dependabot.yml")["updates"]
    assert {u["package-ecosystem"] for u in updates} >= {"pip", "github-actions", "docker"}
    docker = next(u for u in updates if u["package-ecosystem"] == "docker")
    assert {d.strip("/") for d in docker["directories"]} == DOCKERFILES


def _pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_pre_commit_runs_the_pinned_linters_with_the_projects_configuration() -> None:
    config = load(REPO / ".pre-commit-config.yaml")
    repos = {repo["repo"]: repo for repo in config["repos"]}
    pins = _pins()
    ruff = repos["https://github.com/astral-sh/ruff-pre-commit"]
    assert ruff["rev"] == f"v{pins['ruff']}"
    assert {hook["id"] for hook in ruff["hooks"]} == {"ruff-check", "ruff-format"}
    assert repos["https://github.com/python-jsonschema/check-jsonschema"]["rev"] == pins["check-jsonschema"]
    (mypy,) = [hook for hook in repos["local"]["hooks"] if hook["id"] == "mypy"]
    assert mypy["entry"] == ".venv/bin/mypy" and mypy["pass_filenames"] == "false"
    assert "mypy" in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]


def test_changelog_has_this_version_and_contributing_covers_the_extension_points() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(version)}\]", changelog, re.M), f"CHANGELOG.md has no [{version}]"
    contributing = (REPO / "CONTRIBUTING.md").read_text()
    for topic in ("make test-fast", "make test", "pass", "router", "provider", "make lock"):
        assert topic in contributing, topic
