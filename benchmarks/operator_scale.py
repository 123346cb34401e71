"""Operator scale: 200 CompressedModels applied at once to the local Kubernetes API.

Measures, in one run: the operator's peak RSS (goal <= 150 MB) and the time from each apply to the
first compression Job of that CompressedModel (p50/p99). Writes benchmarks/results/operator_scale.md.

    .venv/bin/python benchmarks/operator_scale.py [--count 200]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes import client, config

from kondense.api.crd import crd
from kondense.localcluster.apiserver import LocalAPIServer
from kondense.localcluster.prometheus import free_port

REPO = Path(__file__).resolve().parent.parent
NS = "scale"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument(
        "--settle", type=float, default=60.0, help="seconds to keep measuring RSS after the last Job"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kondense-scale-"))
    api = LocalAPIServer().start()
    kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
    config.load_kube_config(str(kubeconfig))
    client.ApiextensionsV1Api().create_custom_resource_definition(crd())
    core = client.CoreV1Api()
    core.create_namespace({"metadata": {"name": NS}})
    pvc = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    core.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "models"}, "spec": pvc})
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), KONDENSE_METRICS_PORT=str(free_port()),
               KONDENSE_HEALTH_PORT=str(free_port()), KONDENSE_PROMETHEUS_URL="http://127.0.0.1:9")  # fmt: skip
    log = tmp / "operator.log"
    operator = subprocess.Popen([sys.executable, "-m", "kondense.cli", "operator", "--namespace", NS], env=env,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115  # fmt: skip
    peak = 0.0
    try:
        time.sleep(3)
        idle_rss = rss_mb(operator.pid)
        template = yaml.safe_load((REPO / "examples" / "digits" / "compressedmodel.yaml").read_text())
        custom, batch = client.CustomObjectsApi(), client.BatchV1Api()
        applied: dict[str, float] = {}
        started = time.perf_counter()
        for i in range(args.count):
            body = copy.deepcopy(template)
            body["metadata"] = {"name": f"model-{i:03d}", "namespace": NS}
            custom.create_namespaced_custom_object("kondense.dev", "v1alpha1", NS, "compressedmodels", body)
            applied[body["metadata"]["name"]] = time.perf_counter()
        apply_seconds = time.perf_counter() - started
        first_job: dict[str, float] = {}
        deadline = time.perf_counter() + 600
        while len(first_job) < args.count and time.perf_counter() < deadline:
            now = time.perf_counter()
            for job in batch.list_namespaced_job(NS).items:
                model = job.metadata.labels["kondense.dev/model"]
                first_job.setdefault(model, now)
            peak = max(peak, rss_mb(operator.pid))
            time.sleep(0.1)
        all_jobs = time.perf_counter() - started
        settle_end = time.perf_counter() + args.settle
        while time.perf_counter() < settle_end:
            peak = max(peak, rss_mb(operator.pid))
            time.sleep(0.5)
        latencies = [first_job[m] - applied[m] for m in first_job]
        jobs_total = len(batch.list_namespaced_job(NS).items)
    finally:
        operator.terminate()
        operator.wait(timeout=60)
        api.stop()
    row = {
        "models": args.count,
        "with a Job": len(latencies),
        "jobs": jobs_total,
        "apply (s)": round(apply_seconds, 1),
        "all first Jobs (s)": round(all_jobs, 1),
        "apply→first Job p50 (s)": round(statistics.median(latencies), 2) if latencies else None,
        "apply→first Job p99 (s)": round(percentile(latencies, 0.99), 2) if latencies else None,
        "operator RSS idle (MB)": round(idle_rss, 1),
        f"operator RSS peak incl. {args.settle:.0f}s after (MB)": round(peak, 1),
        "goal RSS (MB)": 150,
        "load (1-min avg)": os.getloadavg()[0],
    }
    lines = ["# Operator scale", "", f"`benchmarks/operator_scale.py --count {args.count}` on "
             f"{os.cpu_count()} cores; local Kubernetes API (kmock emulator) in the same run.", "",
             "| metric | value |", "| --- | --- |"]  # fmt: skip
    lines += [f"| {k} | {v} |" for k, v in row.items()]
    out = REPO / "benchmarks" / "results" / "operator_scale.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
