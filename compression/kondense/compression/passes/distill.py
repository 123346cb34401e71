"""Knowledge distillation into a smaller student; the teacher is the base model run in ONNX Runtime.

Students:
* ``hiddenSizes``: an MLP over the flattened input (single float input models).
* ``widthMultiplier`` (default 0.5 when nothing is given): the teacher's own architecture with only
  that fraction of channels/neurons per layer, initialised from the teacher's largest-magnitude
  channels (torch-pruning), then trained on the teacher's outputs.
* ``keepLayers`` (transformers): the base graph with only those layers (found by the layer index in
  node names), trained in place on the teacher's outputs and written back into the same graph, so
  run-time shape arithmetic and dynamic axes survive.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kondense.api.techniques import DistillParams, Task, Technique
from kondense.compression.errors import BadInputError, UnsupportedModelError
from kondense.compression.passes import Pass, PassContext, PassResult, register

DEFAULT_WIDTH = 0.5


def mlp_student(input_shape: tuple[int, ...], output_shape: tuple[int, ...], hidden: list[int]) -> Any:
    import torch
    from torch import nn

    class MlpStudent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            sizes = [int(np.prod(input_shape)), *hidden, int(np.prod(output_shape))]
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(itertools.pairwise(sizes)):
                layers.append(nn.Linear(a, b))
                if i < len(sizes) - 2:
                    layers.append(nn.ReLU())
            self.net = nn.Sequential(*layers)
            self.output_shape = output_shape

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.flatten(1)).reshape(-1, *self.output_shape)

    return MlpStudent()


@register
class DistillPass(Pass):
    technique: ClassVar[Technique] = Technique.DISTILL
    params: DistillParams

    def run(self, source: Path, destination: Path, context: PassContext) -> PassResult:
        import torch

        from kondense.compression.model_files import load_model, signature_of
        from kondense.compression.onnx_torch import export_onnx, to_torch
        from kondense.compression.passes.prune import shrink_channels
        from kondense.compression.training import (
            TrainingSettings,
            fine_tune,
            limit_torch_threads,
            require_per_sample,
            require_train,
            teacher_outputs,
        )

        limit_torch_threads(context.threads)
        p = self.params
        what = "distillation"
        train = require_train(context, what)
        require_per_sample(train, what)
        chosen = [k for k in ("hiddenSizes", "widthMultiplier", "keepLayers") if getattr(p, k) is not None]
        if len(chosen) > 1:
            raise BadInputError("params", f"give at most one student shape, got {chosen}")
        teacher = teacher_outputs(context.reference.base_path, train, context.threads)
        signature = signature_of(load_model(source, with_weights=False))
        examples = signature.fixed_batch or 2  # a fixed batch is traced in that batch
        example_np = {name: array[:examples] for name, array in train.inputs.items()}
        details: dict[str, Any] = {
            "teacher": "base model (ONNX Runtime)",
            "temperature": p.temperature,
            "alpha": p.alpha,
        }

        reduced = None
        if p.keepLayers is not None:
            from kondense.compression.onnx_torch import build_module
            from kondense.compression.transformer_layers import keep_layers

            reduced = load_model(source)
            details["student"] = {
                "kind": "transformer layers",
                **keep_layers(reduced, p.keepLayers, str(source)),
            }
            student = build_module(reduced, str(source), traceable=False)
        elif p.hiddenSizes is not None:
            if len(signature.inputs) != 1 or signature.inputs[0].dtype.kind != "f":
                raise UnsupportedModelError(str(source), "an MLP student needs a model with one float input")
            sample_shape = train.inputs[signature.inputs[0].name].shape[1:]
            student = mlp_student(sample_shape, teacher.shape[1:], p.hiddenSizes)
            details["student"] = {"kind": "mlp", "hiddenSizes": p.hiddenSizes}
        else:
            width = p.widthMultiplier if p.widthMultiplier is not None else DEFAULT_WIDTH
            student, signature = to_torch(source)
            example = tuple(torch.from_numpy(example_np[s.name]) for s in signature.inputs)
            details["student"] = {"kind": "teacher architecture", "widthMultiplier": width}
            if width < 1:
                try:
                    details["student"].update(shrink_channels(student, example, 1 - width, str(source)))
                except UnsupportedModelError as exc:  # say which student could not be built
                    raise UnsupportedModelError(
                        exc.where,
                        f"distillation's student (the base's own architecture at widthMultiplier {width}) "
                        f"cannot be built: {exc.problem}; give params.hiddenSizes for an MLP student instead",
                    ) from exc
        details["studentParameters"] = sum(q.numel() for q in student.parameters())

        alpha = p.alpha if (train.labels is not None and context.task is not Task.EMBEDDING) else 0.0
        if alpha != p.alpha:
            details["note"] = "no usable labels in the training data: trained on the teacher's outputs only"
        settings = TrainingSettings(p.epochs, p.learningRate, p.batchSize, p.temperature, alpha)
        losses = fine_tune(
            student, signature, context, settings, "distill: training student", what=what, teacher=teacher
        )
        details["loss"] = [round(v, 6) for v in losses[:: max(1, len(losses) // 10)]]
        if reduced is not None:
            import onnx

            from kondense.compression.onnx_torch import write_back

            write_back(student, reduced, str(source))
            onnx.save(reduced, str(destination))
        else:
            export_onnx(student, signature, example_np, destination)
        return PassResult(details)
