"""What the probe trains: one fixed batch per task, and the loss that memorises it.

The probe's learning check is memorisation. The same batch is fed at every step, so any
working adapter lowers its loss on that batch, on a random-init model as on a pretrained one,
and nothing about the data distribution can make a healthy adapter look stalled. Per task:

    causal LM       next-token cross-entropy of the batch's tokens
    seq2seq LM      cross-entropy of the decoder's logits against labels = the input ids
    sequence cls.   cross-entropy against fixed random labels (b,)
    image cls.      cross-entropy against fixed random labels, on fixed random pixels
    backbone        mean squared error of every output (hidden states, pooler) against fixed
                    random vectors, one per output, broadcast over positions

The batch and the targets come from generators seeded by ``seed``: a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from loracheck.probe_record import Task


@dataclass(frozen=True)
class Objective:
    """A fixed batch, how to run a model on it and how to score its output."""

    task: Task
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    hf: bool  # a transformers model (keyword inputs, a ModelOutput), else the built-in one

    def outputs(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's float outputs on the batch: logits first when there are logits."""
        if not self.hf:
            return [model(self.inputs["input_ids"])]
        out = model(**self.inputs)
        logits = getattr(out, "logits", None)
        if logits is not None:
            return [logits]
        found = [getattr(out, name, None) for name in ("last_hidden_state", "pooler_output")]
        return [t for t in found if isinstance(t, torch.Tensor)]

    def loss(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """The probe's loss of ``outputs`` (from :meth:`outputs`), in fp32."""
        head = outputs[0].float()
        if self.task is Task.CAUSAL_LM:
            ids = self.inputs["input_ids"]
            logits = head[:, :-1]
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        if self.task is Task.SEQ2SEQ:
            assert self.labels is not None
            return F.cross_entropy(head.reshape(-1, head.shape[-1]), self.labels.reshape(-1))
        if self.labels is not None:  # a classification head
            return F.cross_entropy(head.reshape(-1, head.shape[-1]), self.labels)
        total = torch.zeros((), device=head.device)
        for out, target in zip(outputs, targets, strict=True):
            total = total + F.mse_loss(out.float(), target.expand_as(out))
        return total


def build_objective(
    task: Task,
    ids: torch.Tensor,
    *,
    hf: bool,
    n_labels: int | None,
    pixels: tuple[int, int] | None,
    seed: int,
) -> Objective:
    """The fixed batch for ``task``: ``ids`` (b, t) of the probe text, or for a vision model
    random pixels (b, channels, size, size) from ``pixels = (channels, size)``; fixed random
    labels when the model has a classification head of ``n_labels`` classes."""
    gen = torch.Generator().manual_seed(seed + 2)
    batch = ids.shape[0]
    inputs: dict[str, torch.Tensor]
    if task is Task.VISION:
        assert pixels is not None
        channels, size = pixels
        inputs = {"pixel_values": torch.randn(batch, channels, size, size, generator=gen)}
    else:
        inputs = {"input_ids": ids}
    labels = None
    if task is Task.SEQ2SEQ:
        labels = ids
        inputs = {"input_ids": ids, "labels": ids}
    elif n_labels is not None and task in (Task.SEQ_CLS, Task.VISION):
        labels = torch.randint(0, n_labels, (batch,), generator=gen)
    return Objective(task, inputs, labels, hf)


def fixed_targets(
    objective: Objective, outputs: list[torch.Tensor], seed: int
) -> list[torch.Tensor]:
    """One fixed random vector per output (reachable by a low-rank update), for the backbone
    objective; empty for the other tasks."""
    if objective.task in (Task.CAUSAL_LM, Task.SEQ2SEQ) or objective.labels is not None:
        return []
    gen = torch.Generator().manual_seed(seed + 3)
    return [torch.randn(out.shape[-1], generator=gen).to(out.device) for out in outputs]


def to_device(objective: Objective, device: torch.device, dtype: torch.dtype) -> Objective:
    """The objective with its tensors on ``device`` (pixels in the model's ``dtype``)."""
    move: Callable[[torch.Tensor], torch.Tensor] = lambda t: (  # noqa: E731
        t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device))
    labels = objective.labels.to(device) if objective.labels is not None else None
    return Objective(objective.task, {k: move(v) for k, v in objective.inputs.items()},
                     labels, objective.hf)
