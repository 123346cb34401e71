"""Regenerate the hashed lock files the three images install (`make lock`).

    requirements/operator.lock     pyproject.toml [operator] extra (+ the base dependencies)
    requirements/serving.lock      [serving]
    requirements/compression.lock  [compression] without torch (installed first, from torch-cpu.lock)
    requirements/build.lock        hatchling, the build backend the images build the kondense wheel with
    requirements/torch-cpu.lock    torch's CPU build (only with --torch-index: PyTorch's index must be reachable)

Every version is the one constraints.txt pins (the versions `make test` ran with); every hash of every
file of that version on the index is kept, so the locks install on linux/amd64 and linux/arm64 alike.
pip-compile (pip-tools) resolves for the running interpreter: run it with CPython 3.11, the images' Python.
tests/test_packaging.py checks the locks against pyproject.toml and constraints.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "--quiet", "--generate-hashes", "--strip-extras", "--no-emit-index-url", "--no-emit-find-links",
    "--no-emit-options", "--constraint=constraints.txt",
]  # fmt: skip
IMAGES = {
    "operator": ["--allow-unsafe"],
    "serving": ["--allow-unsafe"],
    # torch comes from PyTorch's CPU index (torch-cpu.lock); its own dependencies stay in this lock
    "compression": ["--unsafe-package=torch"],
}
TORCH_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64")
TORCH_HEADER = """\
# torch for the compression image: the CPU build from PyTorch's wheel index (PyPI's Linux wheels pull
# in CUDA), installed alone and first by compression/Dockerfile:
#   pip install --require-hashes --no-deps --index-url {index} -r requirements/torch-cpu.lock
# Its dependencies are pinned, hashed, in requirements/compression.lock (which leaves torch out).
# Hashes: the CPython 3.11 wheels for linux/amd64 and linux/arm64 (`make lock TORCH_INDEX={index}`).
"""


def compile_lock(output: str, source: str, *extra: str) -> None:
    command = [
        sys.executable,
        "-m",
        "piptools",
        "compile",
        *COMMON,
        *extra,
        f"--output-file={output}",
        source,
    ]
    print("+", " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def torch_lock(index: str, version: str) -> str:
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for platform in TORCH_PLATFORMS:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--python-version=3.11", f"--platform={platform}", f"--index-url={index}",
                 f"--dest={tmp}", f"torch=={version}"],
                check=True,
            )  # fmt: skip
        for wheel in sorted(Path(tmp).glob("torch-*.whl")):
            lines.append(
                f"    --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}  # {wheel.name}"
            )
    return f"torch=={version} \\\n" + " \\\n".join(line.split("  #")[0] for line in lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch-index", help="PyTorch's CPU wheel index, to rewrite torch-cpu.lock")
    parser.add_argument("--torch-version", default="2.13.0+cpu")
    args = parser.parse_args()
    for image, extra in IMAGES.items():
        compile_lock(f"requirements/{image}.lock", "pyproject.toml", f"--extra={image}", *extra)
    compile_lock("requirements/build.lock", "requirements/build.in", "--allow-unsafe")
    if args.torch_index:
        path = ROOT / "requirements" / "torch-cpu.lock"
        path.write_text(
            TORCH_HEADER.format(index=args.torch_index) + torch_lock(args.torch_index, args.torch_version)
        )


if __name__ == "__main__":
    main()
