"""The real console entrypoints: ``kondense-compress`` (the Job) and ``kondense compress/report``."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from kondense.api.artifacts import MANIFEST_FILE, JobResult, Manifest, sha256_file
from kondense.compression.job import termination_message
from kondense.compression.uris import UriResolver

KONDENSE = [sys.executable, "-m", "kondense.cli"]
KONDENSE_COMPRESS = [sys.executable, "-m", "kondense.compression.job"]
INT8 = json.dumps({"name": "int8", "technique": "static-int8", "params": {"perChannel": True}})


@pytest.fixture
def pvc(digits, tmp_path) -> Path:
    """A fake volume mount: <root>/<claim>/<path> as the Job sees pvc://claim/path."""
    root = tmp_path / "pvc"
    (root / "models").mkdir(parents=True)
    (root / "models" / "digits").symlink_to(digits.root)
    return root


@pytest.fixture
def http_root(digits, monkeypatch) -> Iterator[str]:
    # a loopback server: downloads reach it only with the explicit opt-in (tests/security/test_downloads.py)
    monkeypatch.setenv("KONDENSE_ALLOW_PRIVATE_DOWNLOADS", "1")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(digits.root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)


def job(args: list[str], log: Path) -> tuple[int, JobResult]:
    done = run([*KONDENSE_COMPRESS, *args, "--termination-log", str(log), "--latency-runs", "20"])
    text = log.read_text()
    assert len(text.encode()) < 4096
    return done.returncode, JobResult.model_validate_json(text)


def test_job_reads_pvc_and_writes_artifact_and_termination_log(pvc, tmp_path):
    log = tmp_path / "termination-log"
    code, result = job(
        [
            "--target", INT8, "--model", "pvc://models/digits/model.onnx", "--eval", "pvc://models/digits/eval.npz",
            "--calibration", "pvc://models/digits/calib.npz", "--output", "pvc://models/variants/int8",
            "--pvc-root", str(pvc), "--max-accuracy-delta", "0.01",
        ],
        log,
    )  # fmt: skip
    assert code == 0 and result.ok and result.reason == "Succeeded"
    out = pvc / "models" / "variants" / "int8"
    assert result.artifact is not None and result.metrics is not None and result.metrics.sizeRatio is not None
    assert result.artifact.uri == "pvc://models/variants/int8/model.onnx"
    assert result.artifact.sha256 == sha256_file(out / "model.onnx")
    assert result.metrics.sizeRatio < 0.3 and result.technique == "static-int8" and result.trials >= 1
    manifest = Manifest.model_validate_json((out / MANIFEST_FILE).read_text())
    assert manifest.base.uri == "pvc://models/digits/model.onnx"


def test_job_downloads_http_inputs(http_root, tmp_path):
    log = tmp_path / "log"
    code, result = job(
        ["--target", json.dumps({"name": "f", "technique": "fp16"}), "--model", f"{http_root}/model.onnx",
         "--eval", f"{http_root}/eval.npz", "--output", str(tmp_path / "out")],
        log,
    )  # fmt: skip
    assert code == 0, result.message
    assert str(
        Manifest.model_validate_json((tmp_path / "out" / MANIFEST_FILE).read_text()).base.uri
    ).startswith("http://")


def test_http_size_limit_and_missing_file(http_root, tmp_path):
    resolver = UriResolver(download_dir=tmp_path, download_limit=1000)
    from kondense.compression.errors import BadInputError

    with pytest.raises(BadInputError, match="over the 1000-byte limit"):
        resolver.fetch(f"{http_root}/model.onnx", "--model")
    with pytest.raises(BadInputError, match="HTTP 404"):
        resolver.fetch(f"{http_root}/absent.onnx", "--model")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "{not json"], "--target: not valid JSON"),
        (["--target", json.dumps({"name": "x", "technique": "prune", "params": {"amount": 7}})], "amount"),
        (["--target", INT8, "--model", "s3://bucket/model.onnx"], "unsupported URI scheme 's3'"),
        (["--target", INT8, "--model", "pvc://models/digits/absent.onnx"], "absent.onnx is not a file"),
        (["--target", INT8, "--eval", "pvc://models/digits/calib.npz", "--calibration", "pvc://models/digits/eval.npz", "--task", "film"], "unknown task 'film'"),
    ],
)  # fmt: skip
def test_job_bad_input_exits_2_with_a_clear_message(pvc, tmp_path, args, message):
    defaults = {"--model": "pvc://models/digits/model.onnx", "--eval": "pvc://models/digits/eval.npz"}
    for key, value in defaults.items():
        if key not in args:
            args = [*args, key, value]
    code, result = job([*args, "--output", str(tmp_path / "out"), "--pvc-root", str(pvc)], tmp_path / "log")
    assert code == 2 and result.reason == "BadInput" and message in str(result.message)
    assert not (tmp_path / "out").exists()


def test_job_budget_not_met_exits_3_and_keeps_the_artifact(pvc, tmp_path):
    target = json.dumps({"name": "tight", "technique": "dynamic-int8", "maxAccuracyDelta": 1e-9})
    code, result = job(
        ["--target", target, "--model", "pvc://models/digits/model.onnx", "--eval", "pvc://models/digits/eval.npz",
         "--task", "regression", "--output", str(tmp_path / "out"), "--pvc-root", str(pvc)],
        tmp_path / "log",
    )  # fmt: skip
    assert code == 3 and result.reason == "BudgetNotMet" and not result.ok
    assert "budget not met" in str(result.message) and result.trials > 3
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_termination_message_is_kept_under_the_limit():
    result = JobResult(name="x", ok=False, reason="Error", message="y" * 10_000)
    text = termination_message(result)
    assert len(text.encode()) < 4096
    assert str(JobResult.model_validate_json(text).message).startswith("yyy")


def test_cli_compress_json_and_report_plot(digits, tmp_path):
    outs = []
    for technique, params in (("static-int8", ["-p", "perChannel=true"]), ("fp16", [])):
        out = tmp_path / technique
        done = run(
            [*KONDENSE, "compress", str(digits.model), "--technique", technique, *params, "--calibration",
             str(digits.calib), "--eval", str(digits.eval), "--output", str(out), "--json", "--latency-runs", "20"]
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert {
            "sizeRatio",
            "p50Ms",
            "p99Ms",
            "baseP50Ms",
            "baseP99Ms",
            "accuracyDelta",
            "sha256",
            "trials",
        } <= set(result)
        assert result["sha256"] == sha256_file(out / "model.onnx")
        outs.append(out)
    plot = tmp_path / "pareto.png"
    done = run([*KONDENSE, "report", *map(str, outs), "--plot", str(plot)])
    assert done.returncode == 0, done.stderr
    assert "static-int8" in done.stdout and "fp16" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (outs[1] / "model.onnx").write_bytes(b"tampered")
    done = run([*KONDENSE, "report", *map(str, outs)])
    assert done.returncode == 2 and "sha256 does not match manifest.json" in done.stderr


def test_cli_spec_file_with_a_pipeline(digits, tmp_path):
    spec = tmp_path / "cm.yaml"
    spec.write_text(
        "apiVersion: kondense.dev/v1alpha1\nkind: CompressedModel\nspec:\n  task: classification\n"
        "  selection: {maxAccuracyDelta: 0.02}\n  targets:\n"
        "    - {name: int8, technique: static-int8}\n"
        "    - {name: lr-int8, steps: [{technique: low-rank, params: {rankRatio: 0.5}}, {technique: dynamic-int8}]}\n"
    )
    out = tmp_path / "lr"
    args = [
        *KONDENSE,
        "compress",
        str(digits.model),
        "--spec",
        str(spec),
        "--eval",
        str(digits.eval),
        "--output",
        str(out),
    ]
    done = run(args)
    assert done.returncode == 2 and "choose one with --target" in done.stderr
    done = run([*args, "--target", "lr-int8", "--json", "--latency-runs", "20"])
    assert done.returncode == 0, done.stderr
    manifest = Manifest.model_validate_json((out / MANIFEST_FILE).read_text())
    assert [s.technique.value for s in manifest.steps] == ["low-rank", "dynamic-int8"]
    assert manifest.gate is not None and manifest.gate.maxAccuracyDelta == 0.02


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--technique", "fp16"], "--eval: evaluation data is required"),
        (["--technique", "prune", "-p", "amount"], "--param: expected key=value"),
        (["--technique", "fp16", "--eval", "{model}"], "not a readable .npz"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(digits, tmp_path, args, message):
    args = [a.replace("{model}", str(digits.model)) for a in args]
    done = run([*KONDENSE, "compress", str(digits.model), *args, "--output", str(tmp_path / "o")])
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_job_command_line_errors_still_reach_the_termination_log(tmp_path):
    log = tmp_path / "log"
    done = run([*KONDENSE_COMPRESS, "--model", "x", "--termination-log", str(log)])
    assert done.returncode == 2 and "Missing option '--eval'" in done.stderr
    result = JobResult.model_validate_json(log.read_text())
    assert result.reason == "BadInput" and "--eval" in str(result.message)
