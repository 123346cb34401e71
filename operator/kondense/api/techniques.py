"""Compression techniques and their typed parameters.

One params model per technique. The compression passes consume these models, the CRD schema is
generated from them, and `kondense validate` checks user files with them, so a range lives in one
place only. Where two techniques share a parameter name (``learningRate``, ``perChannel`` ...), the
field is declared once here and reused so the merged CRD schema stays unambiguous.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Technique(StrEnum):
    DYNAMIC_INT8 = "dynamic-int8"
    STATIC_INT8 = "static-int8"
    FP16 = "fp16"
    PRUNE = "prune"
    DISTILL = "distill"
    LOW_RANK = "low-rank"
    WEIGHT_ONLY = "weight-only"


class Task(StrEnum):
    CLASSIFICATION = "classification"
    EMBEDDING = "embedding"
    REGRESSION = "regression"


class StrictModel(BaseModel):
    """Base for every user-facing model: unknown fields are errors, not silently dropped."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# Shared parameter types (one declaration per name, see module docstring).
PerChannel = Annotated[bool, Field(description="Quantize weights per output channel instead of per tensor.")]
ReduceRange = Annotated[
    bool,
    Field(description="Use 7-bit weights: avoids overflow on CPUs without VNNI at a small accuracy cost."),
]
IntType = Literal["int8", "uint8"]
Tune = Annotated[
    bool,
    Field(
        description="Accuracy-aware tuning: when an accuracy budget is known, try configurations in order "
        "of expected speed until the variant is within budget."
    ),
]
LearningRate = Annotated[float, Field(gt=0, le=1, description="Optimizer learning rate.")]
FineTuneEpochs = Annotated[
    int, Field(ge=0, le=1000, description="Recovery fine-tune epochs against the base model's outputs.")
]
BatchSize = Annotated[int, Field(ge=1, le=65536, description="Training batch size.")]
NodeNames = Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=1024)]


class DynamicInt8Params(StrictModel):
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized on the fly."""

    perChannel: PerChannel = False
    reduceRange: ReduceRange = False
    weightType: IntType = "int8"
    tune: Tune = True
    nodesToExclude: NodeNames = Field(default_factory=list, description="Nodes kept in float32.")
    quantizeConv: bool = Field(
        False,
        description="Also quantize Conv/ConvTranspose weights. Off by default: ONNX Runtime's dynamic "
        "ConvInteger kernels ran 4-20x slower than float32 on CPU; static-int8 quantizes convolutions "
        "with fast kernels.",
    )


class StaticInt8Params(StrictModel):
    """ONNX Runtime static (QDQ) quantization calibrated on `spec.data.calibration`."""

    perChannel: PerChannel = False
    reduceRange: ReduceRange = False
    weightType: IntType = "int8"
    activationType: IntType = "int8"
    calibrationMethod: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibrationSamples: int = Field(256, ge=1, le=100000, description="Calibration samples used at most.")
    tune: Tune = True
    nodesToExclude: NodeNames = Field(default_factory=list, description="Nodes kept in float32.")


class Fp16Params(StrictModel):
    """Float16 weights and compute; inputs/outputs stay float32 unless keepIoTypes is false."""

    keepIoTypes: bool = Field(True, description="Keep float32 graph inputs and outputs.")
    opBlockList: NodeNames = Field(default_factory=list, description="Op types kept in float32.")


class PruneParams(StrictModel):
    """Magnitude pruning. Unstructured zeroes weights (dense files do not shrink); structured removes
    whole channels/neurons so size and latency really drop."""

    amount: float = Field(0.5, gt=0, lt=1, description="Fraction of weights (or channels) removed.")
    structured: bool = Field(False, description="Remove whole channels/neurons instead of single weights.")
    fineTuneEpochs: FineTuneEpochs = 3
    learningRate: LearningRate = 1e-3
    batchSize: BatchSize = 64


class DistillParams(StrictModel):
    """Train a smaller student on the base model's temperature-scaled outputs (teacher runs in ORT)."""

    hiddenSizes: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(
        None, max_length=16, description="MLP student: hidden layer widths."
    )
    widthMultiplier: float | None = Field(
        None, gt=0, le=1, description="CNN student: fraction of the teacher's channels kept per layer."
    )
    keepLayers: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, max_length=1024, description="Transformer student: indices of the teacher layers kept."
    )
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature of the KL term.")
    alpha: float = Field(
        0.5, ge=0, le=1, description="Weight of the label loss; 1 - alpha weighs the KL to the teacher."
    )
    epochs: int = Field(30, ge=1, le=10000)
    learningRate: LearningRate = 1e-3
    batchSize: BatchSize = 64


class LowRankParams(StrictModel):
    """SVD factorization of large MatMul/Gemm weights into two thinner ones."""

    rankRatio: float = Field(0.5, gt=0, le=1, description="Kept rank as a fraction of min(rows, cols).")
    minDim: int = Field(
        64, ge=1, le=1_000_000, description="Only factor weights whose both dims are at least this."
    )
    fineTuneEpochs: FineTuneEpochs = 0
    learningRate: LearningRate = 1e-3
    batchSize: BatchSize = 64


class WeightOnlyParams(StrictModel):
    """ONNX Runtime weight-only block quantization for transformers: MatMul weights become
    `MatMulNBits` (4 or 8 bits per weight, one scale per block), activations stay float; embedding
    tables (`Gather`) optionally become `GatherBlockQuantized`."""

    bits: Literal[4, 8] = Field(4, description="Bits per MatMul weight.")
    blockSize: Literal[16, 32, 64, 128, 256] = Field(
        32, description="Weights per quantization block (one scale, and zero point, per block)."
    )
    symmetric: bool = Field(False, description="Symmetric blocks (no zero point) instead of asymmetric.")
    accuracyLevel: Literal[0, 1, 2, 3, 4] = Field(
        0,
        description="MatMulNBits compute type of the activations: 0 unset (float), 1 fp32, 2 fp16, 3 bf16, "
        "4 int8 (fastest on CPUs with int8 dot-product instructions, least accurate).",
    )
    embeddings: Literal["none", "int8", "int4"] = Field(
        "int4", description="Embedding tables (Gather with a float table): kept float, int8 or int4 blocks."
    )
    tune: Tune = True
    nodesToExclude: NodeNames = Field(default_factory=list, description="Nodes kept in float32.")


PARAMS_BY_TECHNIQUE: dict[Technique, type[StrictModel]] = {
    Technique.DYNAMIC_INT8: DynamicInt8Params,
    Technique.STATIC_INT8: StaticInt8Params,
    Technique.FP16: Fp16Params,
    Technique.PRUNE: PruneParams,
    Technique.DISTILL: DistillParams,
    Technique.LOW_RANK: LowRankParams,
    Technique.WEIGHT_ONLY: WeightOnlyParams,
}

TECHNIQUES_NEEDING_CALIBRATION = frozenset({Technique.STATIC_INT8})


def params_for(technique: Technique | str, params: dict[str, object] | None = None) -> StrictModel:
    """Validate raw params for a technique (raises pydantic.ValidationError)."""
    return PARAMS_BY_TECHNIQUE[Technique(technique)].model_validate(params or {})
