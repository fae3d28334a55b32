"""Local transformers models for ``loracheck verify --model PATH`` (extra ``loracheck[hf]``).

Only local folders are read (``local_files_only=True``): config.json plus safetensors weights.
Nothing from the folder is ever executed: every transformers call passes
``trust_remote_code=False`` (a folder whose ``auto_map`` names its own Python classes is
refused, never imported), and stdin is empty while transformers runs, so no prompt can be
answered.
A causal LM is probed with next-token cross-entropy on its logits; a model without an LM head
gets a generic objective, the mean squared error between its last hidden state and a fixed
random target, so that "the loss moves" still means the adapter learns.
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

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass
class LoadedModel:
    """A transformers model ready to probe, and how to feed it."""

    model: nn.Module
    path: str
    causal: bool
    vocab_size: int
    tokenizer: Any | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: the tokenizer's when there is one, else bytes mod vocab."""
        if self.tokenizer is not None:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [b % self.vocab_size for b in text.encode("utf-8")]

    def output(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (b, t, vocab) of a causal LM, else the last hidden state (b, t, dim)."""
        out = self.model(input_ids=ids)
        if self.causal:
            return out.logits  # type: ignore[no-any-return]
        return out.last_hidden_state  # type: ignore[no-any-return]


def require_transformers() -> ModuleType:
    """Import transformers, or fail with the one line that says what to install."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise UsageError("--model PATH needs transformers: pip install 'loracheck[hf]'") from None


def _is_causal(config_path: Path) -> bool:
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{config_path}: cannot read the model config ({exc})") from None
    archs = raw.get("architectures") or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def load_hf_model(
    path: Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    device_map: str | None = None,
) -> LoadedModel:
    """Load a local transformers model folder (no network), in eval mode.

    ``device_map="auto"`` shards the model through accelerate (which must be installed);
    otherwise the whole model is moved to ``device``.
    """
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{path}: not a transformers model folder (no config.json)")
    transformers = require_transformers()
    causal = _is_causal(config_path)
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype,
                              "trust_remote_code": False}
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            raise UsageError("--device-map needs accelerate: pip install accelerate")
        kwargs["device_map"] = device_map
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    try:
        with _no_stdin():
            model = auto.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{path}: cannot load the model ({_first_line(exc)})") from None
    if device_map is None:
        model.to(device)
    model.eval()
    tokenizer = None
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        try:
            with _no_stdin():
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    str(path), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, EOFError):
            tokenizer = None
    vocab = int(getattr(model.config, "vocab_size", 256) or 256)
    return LoadedModel(model, str(path), causal, vocab, tokenizer)


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
