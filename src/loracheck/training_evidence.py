"""Signs that an adapter was saved by a training run that had taken steps.

A LoRA whose update is exactly zero is what a fresh adapter should be (B = 0 at step 0) and
what a failed run leaves behind (B never moved). The weights alone cannot tell the two apart;
what the trainers write beside them can:

- transformers ``Trainer`` saves checkpoints as ``checkpoint-{global_step}`` folders holding
  ``trainer_state.json`` with ``global_step`` (transformers 5.x trainer.py
  ``_save_checkpoint``, trainer_utils.py ``PREFIX_CHECKPOINT_DIR = "checkpoint"``,
  trainer_callback.py ``TrainerState.global_step``); TRL, axolotl, LLaMA-Factory, unsloth and
  ms-swift train through it;
- kohya sd-scripts writes ``ss_steps`` and ``ss_epoch`` into every saved file's metadata
  (train_network.py ``save_model``);
- mlx-lm saves ``{iteration:07d}_adapters.safetensors`` every ``steps_per_save`` iterations,
  counted from 1 (mlx-lm 0.32 tuner/trainer.py ``train``);
- litgpt's ``finetune_lora`` saves into ``step-{step:06d}`` folders (litgpt 0.5
  finetune/lora.py ``fit``), torchtune after each epoch into ``epoch_{N}`` (torchtune 0.6
  ``FullModelHFCheckpointer.save_checkpoint``, N counted from 0 once an epoch is done).

Only the adapter's folder and its parent are looked at (PEFT saves a named adapter in a
sub-folder of the checkpoint). Nothing here fails: unreadable evidence is no evidence.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TRAINER_STATE = "trainer_state.json"
# trainer_state.json grows with log_history; a bigger one is not read.
MAX_STATE_BYTES = 64 * 2**20

_FOLDER_STEPS = (
    (re.compile(r"^checkpoint-(\d+)$"), "a transformers Trainer checkpoint folder"),
    (re.compile(r"^step-(\d+)$"), "a litgpt step folder"),
)
_EPOCH_FOLDER = re.compile(r"^epoch_(\d+)$")
_MLX_CHECKPOINT = re.compile(r"^(\d{7})_adapters\.safetensors$")


@dataclass(frozen=True)
class TrainingEvidence:
    """What says training took steps: the file or folder, and what it says."""

    where: str
    what: str

    def describe(self) -> str:
        return f"{self.where}: {self.what}"


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _global_step(path: Path) -> int | None:
    """``global_step`` of a trainer_state.json, None when absent or unreadable."""
    if not _regular_file(path):  # never open a FIFO or a device
        return None
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            return None
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    step = doc.get("global_step") if isinstance(doc, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _metadata_steps(metadata: Mapping[str, str]) -> TrainingEvidence | None:
    for key in ("ss_steps", "ss_epoch"):
        raw = metadata.get(key)
        if raw is None:
            continue
        try:
            value = int(str(raw).strip())
        except ValueError:
            continue
        if value > 0:
            return TrainingEvidence("metadata", f"{key} = {value} (kohya)")
    return None


def find_training_evidence(
    weights: Path | None, metadata: Mapping[str, str]
) -> TrainingEvidence | None:
    """The first sign that the adapter at ``weights`` was saved after training steps, if any."""
    found = _metadata_steps(metadata)
    if found is not None or weights is None:
        return found
    # Absolute, so that the folders of `loracheck check .` have their names.
    weights = weights.absolute()
    match = _MLX_CHECKPOINT.match(weights.name)
    if match is not None and int(match.group(1)) > 0:
        return TrainingEvidence(weights.name, f"an mlx-lm checkpoint of iteration "
                                f"{int(match.group(1))}")
    folder = weights.parent
    for place in (folder, folder.parent):
        state = place / TRAINER_STATE
        step = _global_step(state)
        if step is not None and step > 0:
            return TrainingEvidence(str(state), f"global_step {step}")
    for place in (folder, folder.parent):
        name = place.name
        for pattern, what in _FOLDER_STEPS:
            m = pattern.match(name)
            if m is not None and int(m.group(1)) > 0:
                return TrainingEvidence(f"{name}/", f"{what}, step {int(m.group(1))}")
        m = _EPOCH_FOLDER.match(name)
        if m is not None:
            return TrainingEvidence(f"{name}/", f"a torchtune checkpoint after epoch "
                                    f"{int(m.group(1)) + 1}")
    return None
