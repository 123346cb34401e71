"""The digits example as the tests build it: once per session, with the real ``kondense example digits``."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KONDENSE = str(Path(sys.executable).parent / "kondense")


@dataclass(frozen=True)
class DigitsBuild:
    """Where the example was written (model.onnx, calib/train/eval .npz, eval-requests.jsonl) and the
    summary line the command printed (accuracy, parameters)."""

    root: Path
    summary: dict[str, object]


def build_digits(out: Path) -> DigitsBuild:
    """``kondense example digits --out OUT`` (seeded: every build is the same)."""
    done = subprocess.run(
        [KONDENSE, "example", "digits", "--out", str(out)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return DigitsBuild(out, json.loads(done.stdout.strip().splitlines()[-1]))
