"""Local transformers models for ``loracheck verify --model PATH`` (extra ``loracheck[hf]``).

Only local folders are read (``local_files_only=True``): config.json plus safetensors weights.
Nothing from the folder is ever executed: every transformers call passes
``trust_remote_code=False`` (a folder whose ``auto_map`` names its own Python classes is
refused, never imported), and stdin is empty while transformers runs, so no prompt can be
answered.
The model class follows the task (:func:`task_of`): ``config.architectures`` and the adapter's
PEFT ``task_type`` choose a causal LM, a sequence classifier (its head kept), a seq2seq LM, a
vision backbone or a plain backbone; :mod:`loracheck.reference.objective` says how each is
probed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from loracheck.errors import UsageError
from loracheck.probe_record import Task

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass
class LoadedModel:
    """A transformers model ready to probe, and how to feed it."""

    model: nn.Module
    path: str
    task: Task
    vocab_size: int
    tokenizer: Any | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: the tokenizer's when there is one, else bytes mod vocab."""
        if self.tokenizer is not None:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [b % self.vocab_size for b in text.encode("utf-8")]


def require_transformers() -> ModuleType:
    """Import transformers, or fail with the one line that says what to install."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise UsageError("--model PATH needs transformers: pip install 'loracheck[hf]'") from None


# PEFT's task_type (peft/utils/peft_types.py, TaskType, 0.21.2) -> the task probed.
_PEFT_TASKS = {
    "CAUSAL_LM": Task.CAUSAL_LM,
    "SEQ_CLS": Task.SEQ_CLS,
    "SEQ_2_SEQ_LM": Task.SEQ2SEQ,
    "FEATURE_EXTRACTION": Task.FEATURES,
}


def read_model_config(path: Path) -> dict[str, Any]:
    """The model folder's ``config.json`` as data (one line on failure)."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{path}: not a transformers model folder (no config.json)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{config_path}: cannot read the model config ({_first_line(exc)})"
                         ) from None
    if not isinstance(raw, dict):
        raise UsageError(f"{config_path}: the model config is not a JSON object")
    return raw


def task_of(config: dict[str, Any], task_type: str | None = None) -> Task:
    """The task to probe: the adapter's PEFT ``task_type`` when it names one, else what
    ``config.architectures`` says (``…ForCausalLM``/``…LMHeadModel``, ``…ForSequence-
    Classification``, an encoder-decoder, an image model), else a plain backbone."""
    if task_type and str(task_type).upper() in _PEFT_TASKS:
        return _PEFT_TASKS[str(task_type).upper()]
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return Task.SEQ_CLS
    if config.get("is_encoder_decoder") and any(
            a.endswith(("ForConditionalGeneration", "ForSeq2SeqLM")) for a in archs):
        return Task.SEQ2SEQ
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return Task.CAUSAL_LM
    if "image_size" in config and "num_channels" in config:
        return Task.VISION
    return Task.FEATURES


def _auto_class(transformers: ModuleType, task: Task, config: dict[str, Any]) -> Any:
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if task is Task.CAUSAL_LM:
        return transformers.AutoModelForCausalLM
    if task is Task.SEQ_CLS:
        return transformers.AutoModelForSequenceClassification
    if task is Task.SEQ2SEQ:
        return transformers.AutoModelForSeq2SeqLM
    if task is Task.VISION and any(a.endswith("ForImageClassification") for a in archs):
        return transformers.AutoModelForImageClassification
    return transformers.AutoModel


def load_hf_model(
    path: Path,
    *,
    task: Task,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    device_map: str | None = None,
) -> LoadedModel:
    """Load a local transformers model folder (no network) for ``task``, in eval mode.

    ``device_map="auto"`` shards the model through accelerate (which must be installed);
    otherwise the whole model is moved to ``device``.
    """
    path = Path(path)
    config = read_model_config(path)
    transformers = require_transformers()
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype,
                              "trust_remote_code": False}
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise UsageError("--device-map needs accelerate: pip install accelerate")
        kwargs["device_map"] = device_map
    auto = _auto_class(transformers, task, config)
    transformers.utils.logging.disable_progress_bar()  # verify draws its own progress
    try:
        with _no_stdin():
            model = auto.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: cannot load the model ({_first_line(exc)})") from None
    if device_map is None:
        model.to(device)
    model.eval()
    if task is Task.SEQ_CLS and getattr(model.config, "pad_token_id", None) is None:
        # A classifier without a pad token refuses batches > 1; an id no input holds makes
        # it read the last position, as it does for unpadded rows (in memory only).
        model.config.pad_token_id = -1
    tokenizer = None
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        try:
            with _no_stdin():
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    str(path), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, EOFError):
            tokenizer = None
    text_config = getattr(model.config, "get_text_config", lambda: model.config)()
    vocab = int(getattr(text_config, "vocab_size", 256) or 256)
    return LoadedModel(model, str(path), task, vocab, tokenizer)


@contextlib.contextmanager
def _no_stdin() -> Iterator[None]:
    """sys.stdin is an empty stream inside: a library prompt reads EOF, never the user's input
    (``yes | loracheck verify`` must not answer "run the custom code?")."""
    saved = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        yield
    finally:
        sys.stdin = saved


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
