"""Training against a teacher: the shared loop of recovery fine-tunes and distillation.

The teacher is the base ONNX model run in ONNX Runtime (its outputs are computed once per data
set). The loss depends on the task: temperature-scaled KL for classification (plus an optional
label term weighted by ``alpha``), MSE for embeddings and regression (plus cosine for embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kondense.api.techniques import Task
from kondense.compression.data import Dataset
from kondense.compression.errors import BadInputError
from kondense.compression.evaluation import model_outputs
from kondense.compression.model_files import ModelSignature

if TYPE_CHECKING:
    from kondense.compression.passes import PassContext


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int
    learning_rate: float
    batch_size: int
    temperature: float = 4.0
    alpha: float = 0.0  # weight of the label loss (classification with labels only)
    seed: int = 0


def distillation_loss(
    task: Task, student: Any, teacher: Any, labels: Any, temperature: float, alpha: float
) -> Any:
    import torch
    from torch.nn import functional

    if task is Task.CLASSIFICATION:
        t = temperature
        soft = functional.kl_div(
            functional.log_softmax(student / t, dim=-1), functional.log_softmax(teacher / t, dim=-1),
            log_target=True, reduction="batchmean",
        ) * (t * t)  # fmt: skip
        if labels is None or alpha == 0:
            return soft
        return (1 - alpha) * soft + alpha * functional.cross_entropy(student, labels)
    mse = functional.mse_loss(student, teacher)
    if task is Task.EMBEDDING:
        flat_s, flat_t = student.reshape(len(student), -1), teacher.reshape(len(teacher), -1)
        return mse + (1 - functional.cosine_similarity(flat_s, flat_t, dim=1)).mean()
    return mse + (
        0 if labels is None or alpha == 0 else alpha * functional.mse_loss(student, labels.to(torch.float32))
    )


def limit_torch_threads(threads: int) -> None:
    """Pin torch's intra-op threads. On a shared 2-core machine OpenMP's 2-thread barriers spin
    against other processes: the digits training measured 85 s with 2 threads vs 9 s with 1."""
    import torch

    torch.set_num_threads(max(1, threads))


def teacher_outputs(teacher_path: Path, dataset: Dataset, threads: int) -> np.ndarray:
    return model_outputs(teacher_path, dataset, threads=threads)


def freeze_norm_statistics(module: Any) -> int:
    """Put the batch norms of ``module`` in eval mode (their scale and shift still train): the modules
    trained here start from the base's weights and train on few samples (a benchmark's 16 calibration
    pages), where batch statistics and the running averages they move make the student worse than its
    starting point (paddle-det distill at width 0.97: delta 0.25 with them, 0.16 frozen). Returns how
    many were frozen."""
    from torch import nn

    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d)]
    for norm in norms:
        norm.eval()
    return len(norms)


def train_against_teacher(
    module: Any,
    signature: ModelSignature,
    dataset: Dataset,
    teacher: np.ndarray,
    task: Task,
    settings: TrainingSettings,
    progress: Any,
    description: str,
    regularizer: Any = None,
) -> list[float]:
    """Train ``module`` in place; returns the mean loss of each epoch."""
    import torch

    if settings.epochs == 0:
        return []
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    inputs = [torch.from_numpy(np.ascontiguousarray(dataset.inputs[s.name])) for s in signature.inputs]
    target = torch.from_numpy(teacher.astype(np.float32))
    labels = None
    if dataset.labels is not None and settings.alpha > 0:
        if task is Task.CLASSIFICATION and dataset.labels.dtype.kind not in "iu":
            raise BadInputError(f"{dataset.source}[labels]", "classification labels must be integers")
        labels = torch.from_numpy(
            dataset.labels.astype(np.int64 if task is Task.CLASSIFICATION else np.float32)
        )
    optimizer = torch.optim.Adam(
        [p for p in module.parameters() if p.requires_grad], lr=settings.learning_rate
    )
    # A model whose inputs fix the batch (a Reshape to [1, -1] in a caffe2 export) trains in that batch.
    batch_size = signature.fixed_batch or settings.batch_size
    steps_per_epoch = (len(dataset) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs * steps_per_epoch)
    history = []
    progress.start(description, total=settings.epochs)
    module.train()
    freeze_norm_statistics(module)
    for _ in range(settings.epochs):
        total = 0.0
        for idx in torch.randperm(len(dataset), generator=generator).split(batch_size):
            optimizer.zero_grad()
            output = module(*[x[idx] for x in inputs])
            if isinstance(output, tuple):
                output = output[0]
            loss = distillation_loss(
                task,
                output,
                target[idx],
                None if labels is None else labels[idx],
                settings.temperature,
                settings.alpha,
            )
            if regularizer is not None:
                loss = loss + regularizer()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(dataset))
        progress.advance()
    module.eval()
    progress.finish()
    return history


def require_per_sample(dataset: Dataset, what: str) -> None:
    """The torch passes batch every input along the samples: inputs fed as stored are refused."""
    if dataset.fixed:
        raise BadInputError(
            dataset.source,
            f"{what} trains on batches of samples, and input(s) {sorted(dataset.fixed)} are fed as stored "
            "('fixed:'), which the torch training passes cannot batch; use a technique that does not train",
        )


def require_train(context: PassContext, what: str) -> Dataset:
    """The pass's training data, or a clear refusal naming ``what`` needs it."""
    if context.train is None:
        raise BadInputError("train", f"{what} needs training (or calibration) data")
    return context.train


def fine_tune(
    module: Any,
    signature: ModelSignature,
    context: PassContext,
    settings: TrainingSettings,
    description: str,
    *,
    what: str,
    teacher: np.ndarray | None = None,
) -> list[float]:
    """Train ``module`` in place on ``context.train`` against the base model's outputs (run once in
    ONNX Runtime unless ``teacher`` already holds them); returns the mean loss of each epoch.

    The one recovery/distillation loop of the prune, low-rank and distill passes; ``what`` names
    the caller in the refusal when there is no training data."""
    import torch

    train = require_train(context, what)
    require_per_sample(train, what)
    if teacher is None:
        teacher = teacher_outputs(context.reference.base_path, train, context.threads)
    with torch.enable_grad():
        return train_against_teacher(
            module, signature, train, teacher, context.task, settings, context.progress, description
        )
