"""Models kondense has never seen × every technique: a variant or one clear sentence, never a traceback.

The ``onnx`` wheel ships ONNX models of its backend tests: the caffe2 model zoo in ``light/`` (IR < 4,
weights as ``ConstantOfShape`` fills), ``pytorch-converted/*/model.onnx`` (opset 6 exports of torch
layers, some with a fixed batch of 2) and ``simple/*/model.onnx``. For each model this writes random
evaluation/calibration ``.npz`` files (key = input name, ``[N, ...]`` respecting the fixed dims, N a
multiple of a fixed batch), runs ``compress_model`` (the engine behind ``kondense compress``) with each
technique and classifies the result:

* **ok**: a variant was written (``size`` is its size over the base's);
* **refusal**: a ``BadInputError`` whose message is one line, names the user's model (or data file),
  no temporary file, and carries no raw ONNX Runtime text;
* **defect**: anything else: another exception (the CLI would say "compression failed: ..."), a
  multi-line or over-long message, a temporary path, ORT's ``[ONNXRuntimeError]`` prefix or a C++
  source location, or a timeout.

Each model runs in its own process (a crash or a hang costs one model). The evaluation is trimmed for
speed (``--latency-runs``, 2 warm-up runs, no footprint subprocesses) unless ``--full-eval``: the
sweep is about whether each technique completes or refuses cleanly, not about its numbers.

    nice -n 19 .venv/bin/python benchmarks/sweep_onnx_wheel.py [--only SUBSTRING...] [--techniques ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

TECHNIQUES: dict[str, dict[str, Any]] = {
    "dynamic-int8": {},
    "static-int8": {"calibrationSamples": 8},
    "fp16": {},
    "weight-only": {},
    "low-rank": {},
    "prune": {"fineTuneEpochs": 1, "batchSize": 8},
    "distill": {"epochs": 1, "batchSize": 8},
}
EVAL_SAMPLES, CALIBRATION_SAMPLES = 4, 8
MAX_MESSAGE = 1000  # one sentence may list ops; longer is not read
TEMP_PATH = re.compile(r"\.partial-|/intake/|intake\.onnx|step-\d+/|out\.onnx")
RAW_ORT = re.compile(r"\[ONNXRuntimeError\]|\.(?:cc|cpp|h):\d+|onnxruntime::")


def wheel_models() -> list[Path]:
    import onnx

    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    return [
        *sorted((data / "light").glob("*.onnx")),
        *sorted((data / "pytorch-converted").glob("*/model.onnx")),
        *sorted((data / "simple").glob("*/model.onnx")),
    ]


def label(path: Path) -> str:
    return path.stem if path.parent.name == "light" else f"{path.parent.parent.name}/{path.parent.name}"


def fixed_batch(shapes: list[tuple[int | None, ...]]) -> int:
    """The batch most inputs fix on axis 0 (1 when none does); inputs fixing another size are
    stored as ``fixed:`` (fed as they are, e.g. a shape vector beside the data)."""
    firsts = Counter(s[0] for s in shapes if s and s[0] is not None)
    return firsts.most_common(1)[0][0] if firsts else 1


def make_data(model_path: Path, folder: Path) -> tuple[Path, Path] | str:
    """Random eval and calibration files for the model's inputs, or why none could be made."""
    from kondense.compression.errors import BadInputError
    from kondense.compression.model_files import load_model, signature_of

    try:
        signature = signature_of(load_model(model_path))
    except BadInputError as exc:
        return str(exc)
    batch = fixed_batch([s.shape for s in signature.inputs])
    rng = np.random.default_rng(0)
    files = []
    for name, count in (("eval", EVAL_SAMPLES), ("calibration", CALIBRATION_SAMPLES)):
        count = -(-count // batch) * batch
        arrays: dict[str, np.ndarray] = {}
        for spec in signature.inputs:
            if not spec.shape or (spec.shape[0] is not None and spec.shape[0] != batch):
                # a scalar or an input of another leading size: fed as stored with every sample
                shape = tuple(1 if d is None else d for d in spec.shape)
                value = rng.standard_normal(shape) if spec.dtype.kind == "f" else np.ones(shape)
                arrays[f"fixed:{spec.name}"] = value.astype(spec.dtype)
                continue
            shape = (count, *[8 if d is None else d for d in spec.shape[1:]])
            if spec.dtype.kind == "f":
                arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                arrays[spec.name] = rng.random(shape) < 0.5
            else:
                arrays[spec.name] = rng.integers(0, 4, size=shape).astype(spec.dtype)
        path = folder / f"{name}.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        files.append(path)
    return files[0], files[1]


def classify_message(message: str) -> str | None:
    """Why a refusal's message is a defect, or None when it is one clear line."""
    if "\n" in message.strip():
        return "multi-line"
    if TEMP_PATH.search(message):
        return "temporary path"
    if RAW_ORT.search(message):
        return "raw ORT text"
    if len(message) > MAX_MESSAGE:
        return f"over {MAX_MESSAGE} characters"
    return None


def names_no_input(message: str, model: Path, data_folder: Path) -> str | None:
    """A refusal must say which of the user's files it is about: the model or a data file."""
    if str(model) in message or str(data_folder) in message:
        return None
    return "names neither the model nor a data file"


def run_one(model_path: Path, techniques: list[str], latency_runs: int, full_eval: bool) -> None:
    """In the child: every technique on one model, one JSON line each (flushed as it finishes)."""
    from kondense.compression import evaluation, pipeline
    from kondense.compression.errors import BadInputError
    from kondense.compression.pipeline import DataFiles, compress_model

    if not full_eval:
        original_latency = evaluation.measure_latency

        def quick_latency(*args: Any, **kwargs: Any) -> Any:
            return original_latency(*args, **{**kwargs, "warmup": 2})

        def no_footprint(paths: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
            return [evaluation.Footprint(0.0, None) for _ in paths]

        evaluation.measure_latency = quick_latency  # type: ignore[assignment]
        evaluation.measure_footprint = no_footprint  # type: ignore[assignment]
        del pipeline
    with tempfile.TemporaryDirectory(prefix="kondense-sweep-") as tmp:
        folder = Path(tmp)
        data = make_data(model_path, folder)
        for technique in techniques:
            row: dict[str, Any] = {"technique": technique}
            start = time.perf_counter()
            if isinstance(data, str):
                row.update(outcome="refusal", message=data)
            else:
                evaluation_file, calibration_file = data
                target = {"name": "t", "technique": technique, "params": TECHNIQUES[technique]}
                try:
                    manifest = compress_model(
                        model_path,
                        target,
                        DataFiles(evaluation=evaluation_file, calibration=calibration_file),
                        folder / f"out-{technique}",
                        latency_runs=latency_runs,
                    )
                    row.update(outcome="ok", size=round(manifest.metrics.sizeRatio or 0.0, 4))
                except BadInputError as exc:
                    row.update(outcome="refusal", message=str(exc))
                except Exception as exc:  # what the CLI reports as "compression failed"
                    row.update(
                        outcome="defect",
                        why=f"{type(exc).__name__} (traceback)",
                        message=f"{type(exc).__name__}: {exc}",
                        where=traceback.format_exc().strip().splitlines()[-3:-1],
                    )
            if row["outcome"] == "refusal":
                why = classify_message(row["message"]) or names_no_input(row["message"], model_path, folder)
                if why:
                    row.update(outcome="defect", why=why)
            row["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(row), flush=True)


def sweep(
    models: list[Path], techniques: list[str], timeout: float, latency_runs: int, full_eval: bool
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model in models:
        command = [sys.executable, __file__, "--child", str(model), "--latency-runs", str(latency_runs)]
        command += ["--techniques", *techniques] + (["--full-eval"] if full_eval else [])
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
            stdout, failure = (
                done.stdout,
                (
                    None
                    if done.returncode == 0
                    else f"process exited {done.returncode}: {done.stderr.strip()[-300:]}"
                ),
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout or b""
            stdout = out.decode() if isinstance(out, bytes) else out
            failure = f"timeout after {timeout:.0f} s"
        seen = set()
        for line in stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                seen.add(row["technique"])
                rows.append({"model": label(model), **row})
                print(
                    f"{label(model):40s} {row['technique']:13s} {row['outcome']:8s} "
                    f"{row.get('why') or ''} {row.get('message', row.get('size', ''))}"[:400],
                    flush=True,
                )
        for technique in techniques:
            if technique not in seen:
                row = {
                    "model": label(model),
                    "technique": technique,
                    "outcome": "defect",
                    "why": "crash/timeout",
                    "message": failure or "no result",
                }
                rows.append(row)
                print(f"{label(model):40s} {technique:13s} defect   {row['message']}"[:400], flush=True)
    return rows


def reclassify(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row judged by today's rules (a refusal's message may pass or fail them)."""
    if row["outcome"] == "ok" or "traceback" in str(row.get("why")) or row.get("why") == "crash/timeout":
        return row
    why = classify_message(row.get("message", ""))
    return {**row, "outcome": "defect" if why else "refusal", "why": why}


def summary(rows: list[dict[str, Any]]) -> str:
    counts = Counter(r["outcome"] for r in rows)
    lines = [
        f"{len(rows)} model x technique runs: "
        + ", ".join(f"{counts.get(k, 0)} {k}" for k in ("ok", "refusal", "defect")),
        "",
        "| technique | ok | refusal | defect |",
        "|---|---|---|---|",
    ]
    for technique in dict.fromkeys(r["technique"] for r in rows):
        c = Counter(r["outcome"] for r in rows if r["technique"] == technique)
        lines.append(f"| {technique} | {c.get('ok', 0)} | {c.get('refusal', 0)} | {c.get('defect', 0)} |")
    defects = [r for r in rows if r["outcome"] == "defect"]
    if defects:
        lines += ["", "Defects:", ""]
        lines += [
            f"- {r['model']} {r['technique']}: {r.get('why')}: {' '.join(r.get('message', '').split())[:300]}"
            for r in defects
        ]
    no_gain = [r for r in rows if r["outcome"] == "ok" and r.get("size", 0) >= 1.0]
    if no_gain:
        lines += [
            "",
            "Variants not smaller than the base (tiny graphs may grow by quantization parameters):",
            "",
        ]
        lines += [f"- {r['model']} {r['technique']}: size {r['size']}" for r in no_gain]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="Models whose label contains one of these.")
    parser.add_argument("--techniques", nargs="*", default=list(TECHNIQUES), choices=list(TECHNIQUES))
    parser.add_argument("--timeout", type=float, default=240.0, help="Seconds per small model.")
    parser.add_argument("--light-timeout", type=float, default=1200.0, help="Seconds per light/ model.")
    parser.add_argument("--latency-runs", type=int, default=10)
    parser.add_argument("--full-eval", action="store_true", help="Warm-up and footprint as the CLI does.")
    parser.add_argument("--json", type=Path, help="Write every row here.")
    parser.add_argument("--markdown", type=Path, help="Write the summary here (with the machine).")
    parser.add_argument("--summarise", nargs="*", type=Path, help="Summarise earlier --json files instead.")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.summarise:
        text = summary([reclassify(r) for path in args.summarise for r in json.loads(path.read_text())])
        print(text)
        if args.markdown:
            args.markdown.write_text(header() + text + "\n")
        return
    if args.child:
        run_one(args.child, args.techniques, args.latency_runs, args.full_eval)
        return
    models = [m for m in wheel_models() if not args.only or any(s in label(m) for s in args.only)]
    rows: list[dict[str, Any]] = []
    for light in (False, True):
        chosen = [m for m in models if (m.parent.name == "light") == light]
        timeout = args.light_timeout if light else args.timeout
        rows += sweep(chosen, args.techniques, timeout, args.latency_runs, args.full_eval)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print()
    print(summary(rows))
    if args.markdown:
        args.markdown.write_text(header() + summary(rows) + "\n")


def header() -> str:
    from datetime import UTC, datetime

    import onnx

    from kondense.compression.hardware import evaluation_hardware

    return (
        "# Models kondense has never seen\n\n"
        f"Generated by `benchmarks/sweep_onnx_wheel.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on "
        f"{evaluation_hardware().summary()}; onnx {onnx.__version__}. "
        "Every model the `onnx` wheel ships for its backend tests (`light/` caffe2 zoo, "
        "`pytorch-converted/`, `simple/`) × every technique, on random data: **ok** (a variant), "
        "**refusal** (one sentence naming the user's model), **defect** (anything else).\n\n"
    )


if __name__ == "__main__":
    main()
