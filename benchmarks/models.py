"""Real-world models × techniques: what kondense does with the ONNX models users bring.

For every model of the corpus (``benchmarks/corpus.py``, never committed) and every technique this
runs ``compress_model`` exactly as the CLI and the Job do (intake, pass, evaluation of base and variant
interleaved in the same run) and writes ``benchmarks/results/models.md``: size ratio, p50 speed-up,
accuracy delta and gate, or the one-sentence refusal. The header records the CPU model and the ISA
flags that decide ONNX Runtime's int8 kernels (AVX2, AVX-512 VNNI, AMX).

Inputs are made offline and deterministically per data generator (``feed`` in corpus.json): text
lines and pages rendered with Pillow for the OCR models, bytes of local files for magika, sklearn's
digits/diabetes for the own exports, random token ids for the encoder.

    scripts/fetch-corpus.sh && .venv/bin/python benchmarks/models.py [--only NAME...] [--techniques ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from corpus import DEFAULT_DIR  # noqa: E402

BUDGETS = {"classification": 0.01, "regression": 0.05, "embedding": 0.01}
TECHNIQUES: dict[str, dict[str, Any]] = {
    "dynamic-int8": {"tune": False},
    "static-int8": {"tune": False, "calibrationSamples": 32},
    "fp16": {},
    "low-rank": {"fineTuneEpochs": 0},
    "prune": {"amount": 0.5, "structured": True, "fineTuneEpochs": 0},
    "weight-only": {},
    "distill": {"epochs": 5},
}
# Every model x technique runs with its task's budget, as a user with maxAccuracyDelta would: the tuner,
# fp16 mixed precision and the strength back-off are on, and the gate says pass or FAIL. ``--naive``
# adds the same technique once more without a budget (what a plain ORT tool call would give).


def cpu_record(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """This machine's CPU as the engine records it in every manifest (``hardware.evaluation_hardware``:
    one parser of ``/proc/cpuinfo`` for the header and the manifests), flattened for the header."""
    from kondense.compression.hardware import evaluation_hardware

    hardware = evaluation_hardware(cpuinfo=cpuinfo)
    isa = set(hardware.cpu.isa)
    return {
        "cpu": hardware.cpu.model,
        "avx2": "avx2" in isa,
        "avx512_vnni": "avx512vnni" in isa,
        "avx_vnni": "avxvnni" in isa,
        "amx": "amx-int8" in isa,
        "int8Kernel": hardware.cpu.int8_kernel,
        "onnxruntime": hardware.onnxruntime or "unknown",
        "provider": hardware.executionProvider,
    }


CPU_KEYS = ("cpu", "avx2", "avx512_vnni", "avx_vnni", "amx", "int8Kernel", "onnxruntime", "provider")


def cpu_line(cpu: dict[str, Any]) -> str:
    return (
        f"**{cpu['cpu']}**; avx2={cpu['avx2']}, avx512_vnni={cpu['avx512_vnni']}, avx_vnni={cpu['avx_vnni']}, "
        f"amx={cpu['amx']}"
        + (f" (int8 kernel: {cpu['int8Kernel']})" if cpu.get("int8Kernel") else "")
        + f"; ONNX Runtime {cpu['onnxruntime']} ({cpu['provider']})"
    )


def header_cpus(rows: list[dict[str, Any]], current: dict[str, Any]) -> str:
    """The CPU(s) the rows were measured on. Each row carries the record of the machine that ran it:
    rows merged from earlier runs (--merge) may come from another machine than the one rendering
    (a rerun once showed the renderer's flags, avx_vnni=False, over rows measured where it was True)."""
    seen: list[dict[str, Any]] = []
    unknown = 0
    for row in rows:
        record = row.get("cpu")
        if not isinstance(record, dict):
            unknown += 1
        elif {k: record.get(k) for k in CPU_KEYS} not in seen:
            seen.append({k: record.get(k) for k in CPU_KEYS})
    if not rows:
        seen = [current]
    if len(seen) == 1 and not unknown:
        return f"CPU: {cpu_line(seen[0])}, 1 thread, batch 1. int8 numbers depend on these flags."
    parts = [cpu_line(c) for c in seen]
    if unknown:
        parts.append(f"{unknown} row(s) from runs that recorded no CPU (not necessarily this machine)")
    return (
        f"**Rows measured on {len(seen) + (1 if unknown else 0)} different CPU records** (compare rows "
        f"of one CPU only): {' / '.join(parts)}; 1 thread, batch 1. int8 numbers depend on these flags."
    )


# --- data generators ---------------------------------------------------------------------------------

WORDS = [
    "invoice",
    "total",
    "amount",
    "date",
    "paid",
    "kondense",
    "model",
    "runtime",
    "2026",
    "order",
    "number",
    "street",
    "city",
    "quantity",
    "price",
    "tax",
    "discount",
    "shipping",
    "receipt",
    "customer",
    "account",
    "balance",
    "due",
    "reference",
]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _text_line(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
    draw.text(
        (4, height // 6),
        text,
        fill=tuple(int(v) for v in rng.integers(0, 60, 3)),
        font=_font(int(height * 0.6)),
    )
    return np.asarray(image, dtype=np.float32)


def _page(rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    for row in range(int(rng.integers(4, 9))):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        draw.text(
            (int(rng.integers(5, 80)), 10 + row * 36),
            text,
            fill=(20, 20, 20),
            font=_font(int(rng.integers(16, 26))),
        )
    return np.asarray(image, dtype=np.float32)


def _chw(images: list[np.ndarray], mean: Any, std: Any) -> np.ndarray:
    array = (np.stack(images) / 255.0 - np.asarray(mean)) / np.asarray(std)
    return array.transpose(0, 3, 1, 2).astype(np.float32)


def feed_ocr_cls(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    lines = [_text_line(rng, 48, 192) for _ in range(n)]
    lines = [line[::-1, ::-1] if i % 2 else line for i, line in enumerate(lines)]  # half upside down
    return {"x": _chw(lines, 0.5, 0.5)}


def feed_ocr_rec(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"x": _chw([_text_line(rng, 48, 320) for _ in range(n)], 0.5, 0.5)}


def feed_ocr_det(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"x": _chw([_page(rng, 320) for _ in range(n)], [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}


def feed_image_320(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"images": _chw([_page(rng, 320) for _ in range(n)], 0.0, 1.0)}


def feed_bytes(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """First 1024 and last 1024 bytes of local files (stdlib sources, shared objects, data), padded."""
    files = sorted(p for p in Path(np.__file__).parent.rglob("*") if p.is_file() and p.stat().st_size > 0)
    picked = rng.choice(len(files), size=n, replace=False)
    rows = []
    for index in picked:
        data = files[int(index)].read_bytes()
        head, tail = list(data[:1024]), list(data[-1024:])
        head += [256] * (1024 - len(head))
        tail = [256] * (1024 - len(tail)) + tail
        rows.append(head + tail)
    return {"bytes": np.asarray(rows, dtype=np.int32)}


def feed_vad(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """The model's natural inputs: audio chunks, a recurrent state [2, batch, 128], a scalar rate."""
    return {
        "input": rng.normal(0, 0.1, (n, 576)).astype(np.float32),
        "fixed:state": np.zeros((2, 1, 128), np.float32),  # not per sample: given with every sample
        "fixed:sr": np.array(16000, dtype=np.int64),
    }


def feed_vad_sequence(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "input": rng.normal(0, 0.1, (n, 576)).astype(np.float32),
        "fixed:h": np.zeros((1, 1, 128), np.float32),
        "fixed:c": np.zeros((1, 1, 128), np.float32),
    }


def feed_digits(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = rng.choice(len(digits.images), size=n, replace=False)
    images = np.repeat(np.repeat(digits.images[index] / 16.0, 4, axis=1), 4, axis=2)
    return {"image": images[:, None].astype(np.float32), "labels": digits.target[index].astype(np.int64)}


def feed_tokens(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"ids": rng.integers(0, 1000, (n, 16)).astype(np.int64)}


def feed_diabetes(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_diabetes

    x, _ = load_diabetes(return_X_y=True)
    return {"X": x[rng.choice(len(x), size=n, replace=False)].astype(np.float32)}


FEEDS: dict[str, Callable[[np.random.Generator, int], dict[str, np.ndarray]]] = {
    "ocr-cls": feed_ocr_cls,
    "ocr-rec": feed_ocr_rec,
    "ocr-det": feed_ocr_det,
    "image-320": feed_image_320,
    "bytes": feed_bytes,
    "vad": feed_vad,
    "vad-sequence": feed_vad_sequence,
    "digits-32": feed_digits,
    "token-ids-16": feed_tokens,
    "diabetes": feed_diabetes,
}
HEAVY = {"ocr-det", "image-320", "ocr-rec"}


def write_data(entry: dict[str, Any], where: Path) -> tuple[Path, Path]:
    feed = FEEDS[entry["feed"]]
    heavy = entry["feed"] in HEAVY
    paths = []
    for name, seed, count in (("eval", 1, 24 if heavy else 128), ("calib", 2, 16 if heavy else 64)):
        arrays = feed(np.random.default_rng(seed), count)
        path = where / f"{name}.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]  # "fixed:<name>" keys are plain strings
        paths.append(path)
    return paths[0], paths[1]


# --- running ------------------------------------------------------------------------------------


def run_one(
    entry: dict[str, Any], technique: str, tuned: bool, data: tuple[Path, Path], out: Path
) -> dict[str, Any]:
    from kondense.compression.errors import BadInputError
    from kondense.compression.pipeline import DataFiles, compress_model

    params = dict(TECHNIQUES[technique])
    if tuned:
        params.pop("tune", None)
    budget = BUDGETS[entry["task"]] if tuned else None
    row: dict[str, Any] = {"model": entry["name"], "technique": technique + ("" if tuned else " (no budget)")}
    row["cpu"] = cpu_record()  # rows of several runs may be merged: each says where it was measured
    start = time.monotonic()
    try:
        manifest = compress_model(
            entry["path"],
            {"name": "v", "technique": technique, "params": params},
            DataFiles(evaluation=data[0], calibration=data[1]),
            out,
            task=entry["task"],
            max_accuracy_delta=budget,
            latency_runs=50,
        )
    except BadInputError as exc:
        row["refusal"] = str(exc.problem)
    except Exception as exc:  # a defect of kondense: reported in one line, the run goes on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        (out.parent / f"{entry['name']}-{technique}.traceback.txt").write_text(traceback.format_exc())
    else:
        m = manifest.metrics
        row.update(
            # the corpus's own byte count of the base (with external data); manifestSize is the
            # operator's figure, which must agree
            size=entry["sizeBytes"] / manifest.artifact.sizeBytes if manifest.artifact.sizeBytes else None,
            manifestSize=1 / m.sizeRatio if m.sizeRatio else None,
            speedup=(m.baseP50Ms / m.p50Ms) if m.p50Ms and m.baseP50Ms else None,
            delta=m.accuracyDelta,
            budget=budget,
            gate=("pass" if manifest.gate and manifest.gate.passed else "FAIL")
            if budget is not None
            else "no budget",
            trials=len(manifest.trials),
            # the strength back-off's attempts (prune amount, distill width, low-rank rank): knob, delta
            backoff=[
                {k: v for k, v in t.config.items() if k not in ("step", "technique")}
                | {"delta": t.accuracyDelta, "message": t.message}
                for t in manifest.trials
                if t.config.keys() & {"amount", "widthMultiplier", "rankRatio"}
            ],
            intake="; ".join(manifest.model_dump().get("intake", {}).get("changes", [])),
            details={
                k: v
                for k, v in manifest.steps[0].details.items()
                if k
                in (
                    "recovered",
                    "nodesKeptFloat32",
                    "quantizedNodes",
                    "note",
                    "mixedPrecision",
                    "tuning",
                    "convolutionsKeptFloat32",
                )
            },
        )
    row["seconds"] = round(time.monotonic() - start, 1)
    return row


def machine_load() -> str:
    """The 1-minute load average against the CPU count (the machine is shared while measuring)."""
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        return "unknown"
    return f"{load:.1f} on {os.cpu_count()} CPUs"


def _attempt(attempt: dict[str, Any]) -> str:
    knob = next((f"{k} {v:g}" for k, v in attempt.items() if k not in ("delta", "message")), "?")
    delta = attempt.get("delta")
    return (
        f"{knob} (delta {delta:.4f})"
        if delta is not None
        else f"{knob} ({attempt.get('message') or 'failed'})"
    )


def render(
    rows: list[dict[str, Any]], corpus: list[dict[str, Any]], cpu: dict[str, Any], runs: int = 1
) -> str:
    order = {e["name"]: i for i, e in enumerate(corpus)}
    for row in rows:  # rows of runs before artifact sizes were recorded: correct external-data bases
        entry = next((e for e in corpus if e["name"] == row["model"]), None)
        if entry and entry.get("externalData") and row.get("size") and "manifestSize" not in row:
            model_file = Path(entry["path"]).stat().st_size
            row["size"] = row["size"] * entry["sizeBytes"] / model_file
    rows = sorted(rows, key=lambda r: order.get(r["model"], len(order)))  # stable: runs keep their order
    lines = [
        "# Real-world models × techniques",
        "",
        f"Generated by `benchmarks/models.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        + header_cpus(rows, cpu),
        "",
        *(
            [
                f"**The machine was shared while measuring** (load average {cpu['load']} when the run "
                "started, other work running throughout): read the speed-ups as ratios of base and variant "
                "measured side by side, not as verdicts on absolute speed.",
                "",
            ]
            if cpu.get("load")
            else []
        ),
        "Base and variant are measured in the same run (latency interleaved, 50 runs after 20 warm-up). "
        "Accuracy delta by task: classification = 1 - top-1 agreement with the base (per timestep for "
        "[N, T, C]); regression = relative MAE against the base output; embedding = 1 - mean cosine. "
        f"Every row has its task's budget ({BUDGETS}), as a CompressedModel with maxAccuracyDelta: the "
        "int8 tuner, fp16 mixed precision and the strength back-off (prune, distill, low-rank) are on; "
        "gate pass = a variant within the budget, FAIL = the closest variant missed it (the operator never "
        "deploys it), refused = the one-sentence reason no variant was made. Rows marked '(no budget)' "
        "are the same technique without a budget (--naive)."
        + (f" Rows merged from {runs} runs of this script on this machine (--merge)." if runs > 1 else ""),
        "",
        "## Corpus",
        "",
        "| model | source | exporter | opset | size | what |",
        "|---|---|---|---|---|---|",
    ]
    for e in corpus:
        lines.append(
            f"| {e['name']} | {e['source']} | {e['producer']}; {e.get('note', '')} | {e['opset']} | "
            f"{e['sizeBytes'] / 1e6:.2f} MB | {e['domain']} |"
        )
    lines += [
        "",
        "## Results",
        "",
        "| model | technique | smaller | p50 speed-up | accuracy delta | gate | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "refusal" in r or "error" in r:
            text = r.get("refusal") or f"**defect**: {r['error']}"
            lines.append(
                f"| {r['model']} | {r['technique']} | — | — | — | refused | {text.replace('|', '/')} |"
            )
            continue
        notes = []
        if r.get("details", {}).get("recovered"):
            notes.append("recovered: " + " / ".join(r["details"]["recovered"])[:200])
        if r.get("details", {}).get("nodesKeptFloat32"):
            notes.append(f"{len(r['details']['nodesKeptFloat32'])} node(s) kept float32")
        if r.get("details", {}).get("convolutionsKeptFloat32"):
            notes.append(
                f"{r['details']['convolutionsKeptFloat32']} Conv kept float32 (dynamic ConvInteger is slow)"
            )
        if r.get("details", {}).get("tuning"):
            notes.append("tuner: " + r["details"]["tuning"])
        if r.get("speedup") is not None and r["speedup"] < 0.9:
            notes.append("slower than the base")
        if r.get("backoff"):
            notes.append("back-off: " + ", ".join(_attempt(a) for a in r["backoff"]))
        if r.get("gate") == "FAIL":
            notes.append(
                f"budget {r['budget']} missed: the closest variant is kept in the manifest, the operator "
                "never deploys it"
            )
        if r.get("trials"):
            notes.append(f"{r['trials']} trial(s)")
        delta = r["delta"]
        lines.append(
            f"| {r['model']} | {r['technique']} | {r['size']:.2f}x | {r['speedup']:.2f}x | "
            f"{delta:.4f} | {r['gate']} | {'; '.join(notes).replace('|', '/')} |"
        )
    intake = {r["model"]: r["intake"] for r in rows if r.get("intake")}
    if intake:
        lines += ["", "## What intake changed", ""]
        lines += [f"- **{name}**: {text}" for name, text in intake.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--techniques", nargs="*", default=list(TECHNIQUES))
    parser.add_argument(
        "--naive", action="store_true", help="also run every technique without a budget (no tuner)"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "models.md")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="rows of earlier runs (--json) to include"
    )
    args = parser.parse_args()
    manifest = args.corpus / "corpus.json"
    if not manifest.is_file():
        print(f"no corpus at {args.corpus}: run scripts/fetch-corpus.sh first", file=sys.stderr)
        return 2
    entries = json.loads(manifest.read_text())
    to_run = [e for e in entries if e["name"] in args.only] if args.only else ([] if args.merge else entries)
    cpu = cpu_record()
    cpu["load"] = machine_load()
    rows: list[dict[str, Any]] = [row for path in args.merge for row in json.loads(path.read_text())]
    with tempfile.TemporaryDirectory(prefix="kondense-models-") as tmp:
        for entry in to_run:
            where = Path(tmp) / entry["name"]
            where.mkdir()
            data = write_data(entry, where)
            plan = [(t, True) for t in args.techniques]
            if args.naive:
                plan += [(t, False) for t in args.techniques]
            for technique, tuned in plan:
                row = run_one(entry, technique, tuned, data, where / f"{technique}-{int(tuned)}")
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("details", "cpu")}), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    measured = {r["model"] for r in rows}
    corpus = [e for e in entries if e["name"] in measured]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(rows, corpus, cpu, len(args.merge) + (1 if to_run else 0)))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
