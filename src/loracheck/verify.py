"""``loracheck verify``: measure on a live model what the static checks can only suspect.

A run builds the model (the built-in tiny decoder, or a local transformers folder, its class
chosen by the task), puts the reference LoRA on it (from ``--config``, else the adapter's
config, else a profile), optionally loads an existing adapter, and measures into one
:class:`~loracheck.probe_record.ProbeRecord`:

    fit            the adapter's modules exist in the model and their shapes match
    unsupported    adapter features the reference cannot reproduce (the run stops there)
    identity       outputs at step 0 against the base, eval and train mode, the same dropout
                   masks in both (LoRA draws its masks from its own generator)
    trainable      the trainable count against r·(in + out), base parameters left trainable
    gradients      per factor after the first and the second backward
    losses         the memorisation objective on one fixed batch, before and after the probe
    base_changed   base parameters that moved during the probe (bit for bit)
    merge          merged against unmerged outputs, a second merge, unmerge restoring W
    reload         saved in PEFT's format, reloaded into a fresh model, outputs compared
    nonfinite      every NaN or Inf met on the way

Nothing here judges: the LC3xx rules in :mod:`loracheck.rules.probe` do, through the engine.
torch is imported here and under :mod:`loracheck.reference` only; the CLI imports this module
lazily inside its ``verify`` command.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loracheck.errors import UsageError
from loracheck.model import Diagnostic, InitScheme, LoraSpec, MethodKind
from loracheck.probe_record import (
    OUTPUT_TOL,
    FactorGradient,
    Identity,
    IdentityMode,
    Losses,
    Merge,
    ProbeRecord,
    Reload,
    Task,
    Unsupported,
)
from loracheck.reference.hf import load_hf_model, read_model_config, task_of
from loracheck.reference.init import SCHEMES, ZERO_FACTOR_SCHEMES, scheme_from_peft
from loracheck.reference.inject import Target, inject, lora_modules, merge, plan_targets, unmerge
from loracheck.reference.objective import Objective, build_objective, fixed_targets, to_device
from loracheck.reference.optim import Adam
from loracheck.reference.peft_format import (
    AdapterFactors,
    fit_adapter,
    load_adapter,
    load_saved_modules,
    read_adapter,
    read_peft_dir,
    save_adapter,
)
from loracheck.reference.tinymodel import PROBE_TEXT, build_tiny, encode_bytes
from loracheck.scaling import effective_scale

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The eval loss on the probe's fixed batch must fall at least this much (relative) for the
# adapter to count as learning. Calibrated on the test matrix (tests/archmodels.py, 15
# random-init architectures, 3 seeds, PEFT's kaiming init): the smallest drop a healthy adapter
# reached in 20 steps at lr 1e-3 was 8.1e-4 (Gemma); a stalled one (lr 0, B frozen, scale 0,
# dropout 1, a detached branch) moves exactly 0.
MIN_LOSS_DROP = 1e-4
# --data: only the first bytes are read; the probe needs batch x seq_len tokens.
DATA_CAP_BYTES = 1 << 20
# Refuse, before allocating, an adapter larger than this many times the model's parameters
# (r ≤ min(in, out) gives at most 2×): an absurd r is a typo, not an experiment.
MAX_ADAPTER_TO_MODEL = 4.0
# Extras of a PEFT LoraConfig the reference does not implement: a truthy value is refused.
UNSUPPORTED_EXTRAS = {
    "target_parameters": "LoRA on parameters (MoE experts) through target_parameters",
    "lora_bias": "a trainable bias on lora_B (lora_bias=True)",
    "use_qalora": "QA-LoRA pooling (use_qalora=True)",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable token indices",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "arrow_config": "Arrow routing",
}


def profile_spec(name_or_path: str) -> LoraSpec:
    """The LoRA recipe of a profile (``llmbook``: r 16, α 16, dropout 0.05, A ~ N(0, 0.02²),
    B = 0; ``default``: PEFT's defaults; or a profile TOML) as a spec to inject. The profiles in
    ``loracheck/profiles/`` are the one source of these numbers, for `check` and `verify`."""
    from loracheck.settings import load_profile

    profile = load_profile(name_or_path)
    recipe = profile.recipe
    normal = profile.init_scheme is InitScheme.NORMAL
    return LoraSpec(
        source_format="profile",
        path=f"profile:{profile.name}",
        rank=recipe.rank,
        alpha=recipe.alpha,
        dropout=recipe.dropout,
        init_lora_weights=True,
        init_std=profile.init_std if normal else None,
        target_modules=list(recipe.target_modules) if recipe.target_modules else None,
    )


@dataclass
class VerifyOptions:
    """The flags of ``loracheck verify``, plus hooks the CLI (and tests) fill.

    ``spec`` is a LoRA spec the caller already read (the CLI reads ``--config`` with the core's
    config loaders and passes the result here); without it ``config`` is read with the same
    loaders. ``post_save_check`` runs on the saved adapter folder (the CLI passes ``loracheck
    check``); its error diagnostics go into the record's reload measurement. ``tamper`` is
    called on the injected model before the probe: a hook for planted-fault tests.
    """

    model: str = "builtin"
    adapter: Path | None = None
    config: Path | None = None
    profile: str = "llmbook"
    probe_steps: int = 20
    lr: float = 1e-3
    batch_size: int = 8
    seq_len: int = 64
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    device_map: str | None = None
    compile: bool = False
    data: Path | None = None
    save_adapter: Path | None = None
    overwrite: bool = False
    init: str | None = None
    min_loss_drop: float = MIN_LOSS_DROP
    spec: LoraSpec | None = None
    post_save_check: Callable[[Path], list[Diagnostic]] | None = None
    tamper: Callable[[nn.Module], None] | None = None


# --- the model under test -------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """A model, what it computes, and how to build a fresh copy of it."""

    model: nn.Module
    label: str
    task: Task
    factory: Callable[[], nn.Module]
    encode: Callable[[str], list[int]]
    hf: bool
    n_labels: int | None
    pixels: tuple[int, int] | None


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here")
    return name


def _subject(opts: VerifyOptions, device: str, dtype: torch.dtype, spec: LoraSpec) -> Subject:
    if opts.model == "builtin":

        def build() -> nn.Module:
            return build_tiny(opts.seed).to(device=device, dtype=dtype)

        return Subject(build(), "builtin", Task.CAUSAL_LM, build, encode_bytes, False, None, None)
    path = Path(opts.model)
    if not path.is_dir():
        raise UsageError(f"--model {path}: no such folder")
    config = read_model_config(path)
    task = task_of(config, spec.task_type)

    def load() -> nn.Module:
        return load_hf_model(path, task=task, dtype=dtype, device=device,
                             device_map=opts.device_map).model

    first = load_hf_model(path, task=task, dtype=dtype, device=device, device_map=opts.device_map)
    model_config = first.model.config
    n_labels = int(getattr(model_config, "num_labels", 0) or 0) or None
    pixels = None
    if task is Task.VISION:
        vision: Any = getattr(model_config, "vision_config", model_config)
        pixels = (int(vision.num_channels), int(vision.image_size))
    has_head = task is Task.SEQ_CLS or (
        task is Task.VISION and any(str(a).endswith("ForImageClassification")
                                    for a in config.get("architectures") or []))
    return Subject(first.model, str(path), task, load, first.encode, True,
                   n_labels if has_head else None, pixels)


def _resolve_spec(opts: VerifyOptions, adapter: AdapterFactors | None) -> LoraSpec:
    from loracheck.configs import read_spec

    if opts.spec is not None:
        return _lora_only(opts.spec, str(opts.config or opts.spec.path))
    if opts.config is not None:
        path = Path(opts.config)
        if path.is_dir():
            path = path / "adapter_config.json"
        if not path.is_file():
            raise UsageError(f"--config {opts.config}: no such file")
        return _lora_only(read_spec(path), str(path))
    if adapter is not None and adapter.spec is not None:
        return adapter.spec
    return profile_spec(opts.profile)


# PEFT trains the classification head whole for task_type SEQ_CLS (peft 0.21.2,
# peft_model.py, PeftModelForSequenceClassification: classifier_module_names).
SEQ_CLS_HEADS = ["classifier", "score"]


def _task_defaults(spec: LoraSpec, task: Task) -> LoraSpec:
    """``spec`` with what PEFT adds for the task: a sequence classifier trains its head."""
    if task is Task.SEQ_CLS and spec.modules_to_save is None:
        return replace(spec, modules_to_save=list(SEQ_CLS_HEADS),
                       task_type=spec.task_type or "SEQ_CLS")
    return spec


def _lora_only(spec: LoraSpec, where: str) -> LoraSpec:
    """``spec`` when it configures the LoRA family; another method is a usage error."""
    if spec.method is not MethodKind.LORA:
        raise UsageError(f"--config {where}: it trains {spec.method_name}, not LoRA; "
                         "verify probes LoRA adapters only")
    return spec


def _probe_text(opts: VerifyOptions) -> str:
    if opts.data is None:
        return PROBE_TEXT
    try:
        with open(opts.data, "rb") as handle:
            raw = handle.read(DATA_CAP_BYTES)
    except OSError as exc:
        raise UsageError(f"--data {opts.data}: {exc.strerror or exc}") from None
    return raw.decode("utf-8", errors="replace")


def _fixed_batch(opts: VerifyOptions, subject: Subject) -> torch.Tensor:
    """The probe's one batch (b, seq_len): windows of the probe text at seeded offsets."""
    ids = subject.encode(_probe_text(opts))
    if not ids:
        raise UsageError(f"--data {opts.data}: the probe text is empty")
    need = opts.seq_len + 1
    if len(ids) < need:
        ids = ids * (need // len(ids) + 1)
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(opts.seed)
    starts = torch.randint(0, len(stream) - opts.seq_len + 1, (opts.batch_size,), generator=gen)
    return torch.stack([stream[s : s + opts.seq_len] for s in starts.tolist()])


# --- what the adapter asks for ----------------------------------------------------------------


def _unsupported(spec: LoraSpec, adapter: AdapterFactors | None, scheme: str | None,
                 conv: list[tuple[str, str]]) -> list[Unsupported]:
    """The features of ``spec``/``adapter`` the reference would otherwise silently drop."""
    out: list[Unsupported] = []
    if spec.use_dora or (adapter is not None and adapter.has_magnitude):
        out.append(Unsupported("DoRA", "the weight-decomposed update (use_dora, a "
                               "lora_magnitude_vector) is not implemented by the reference",
                               "use_dora"))
    if spec.bias not in (None, "none"):
        out.append(Unsupported(f'bias="{spec.bias}"', "the reference trains no biases; PEFT "
                               "would train and save them", "bias"))
    for key, what in UNSUPPORTED_EXTRAS.items():
        if spec.extras.get(key):
            out.append(Unsupported(what, "not implemented by the reference", key))
    if adapter is not None and adapter.has_bias:
        out.append(Unsupported("lora_B bias", "the adapter holds lora_B biases (lora_bias)"))
    if scheme is not None and scheme not in SCHEMES:
        out.append(Unsupported(f"init {scheme}", "the reference implements "
                               + ", ".join(SCHEMES), "init_lora_weights"))
    by_kind: dict[str, list[str]] = {}
    for name, kind in conv:
        by_kind.setdefault(kind, []).append(name)
    for kind, names in by_kind.items():
        where = f"{len(names)} modules, first {names[0]}" if len(names) > 1 else names[0]
        moe = kind.endswith(("Experts", "Expert", "Router"))
        detail = ("PEFT adapts these weights as parameters (target_parameters, without dropout)"
                  if moe else "the reference adapts Linear, Conv1D and Embedding modules only")
        out.append(Unsupported(f"{kind} targets ({where})", detail, names[0]))
    return out


def _init_scheme(opts: VerifyOptions, spec: LoraSpec) -> str:
    if opts.init is not None:
        return opts.init
    try:
        return scheme_from_peft(spec.init_lora_weights, init_std=spec.init_std)
    except ValueError:
        return str(spec.init_lora_weights)


# --- measurements -------------------------------------------------------------------------------


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _tol(dtype: str, ref: torch.Tensor) -> float:
    return OUTPUT_TOL[dtype] * max(1.0, float(ref.float().abs().max()))


@dataclass
class _Probe:
    """The live pieces of one run, built once in :func:`run_verify` and only read after."""

    opts: VerifyOptions
    subject: Subject
    runner: nn.Module
    objective: Objective
    targets_out: list[torch.Tensor]
    nonfinite: list[str]

    def outputs(self, *, train: bool, what: str, seed: int) -> list[torch.Tensor]:
        self.runner.train(train)
        torch.manual_seed(seed)  # the base model's own dropout draws the same masks every time
        with torch.no_grad():
            outs = self.objective.outputs(self.runner)
        if not all(bool(torch.isfinite(o).all()) for o in outs):
            self.nonfinite.append(f"output ({what})")
        return outs

    def eval_loss(self, what: str) -> float:
        outs = self.outputs(train=False, what=what, seed=self.opts.seed)
        return float(self.objective.loss(outs, self.targets_out))


def _identity(probe: _Probe, mode: IdentityMode, ref_eval: torch.Tensor,
              ref_train: torch.Tensor, seed: int) -> Identity:
    d_eval = _max_abs(probe.outputs(train=False, what="adapted, eval", seed=seed)[0], ref_eval)
    d_train = _max_abs(probe.outputs(train=True, what="adapted, train", seed=seed)[0], ref_train)
    tol = 0.0 if mode is IdentityMode.EXACT else _tol(probe.opts.dtype, ref_eval)
    return Identity(mode, d_eval, d_train, tol)


def _identity_mode(scheme: str, adapter: AdapterFactors | None, spec: LoraSpec,
                   dtype: str) -> IdentityMode:
    if adapter is not None:
        fresh = all(not (a.any() and b.any()) for a, b in adapter.factors.values())
        if not fresh:
            return IdentityMode.NOT_EXPECTED
        return IdentityMode.EXACT if dtype == "float32" else IdentityMode.WITHIN_TOLERANCE
    zero_factor = scheme in ZERO_FACTOR_SCHEMES or scheme == "zeros"
    if zero_factor:
        return IdentityMode.EXACT if dtype == "float32" else IdentityMode.WITHIN_TOLERANCE
    if (spec.dropout or 0.0) == 0.0:
        return IdentityMode.WITHIN_TOLERANCE
    return IdentityMode.EVAL_ONLY  # PiSSA-like with dropout: only eval mode is an identity


def _adapter_param_ids(model: nn.Module) -> set[int]:
    ids: set[int] = set()
    for _, module in lora_modules(model):
        ids.add(id(module.factor_a))
        ids.add(id(module.factor_b))
    return ids


def _saved_param_names(model: nn.Module, saved_modules: list[str]) -> set[str]:
    return {f"{m}.{n}" for m in saved_modules for n, _ in model.get_submodule(m).named_parameters()}


def _grad_rows(model: nn.Module, backward: int) -> list[FactorGradient]:
    rows: list[FactorGradient] = []
    for name, module in lora_modules(model):
        a, b = module.factor_a, module.factor_b
        a_zero, b_zero = not bool(a.detach().any()), not bool(b.detach().any())
        for label, p, partner_zero in (("A", a, b_zero), ("B", b, a_zero)):
            g = None if p.grad is None else float(p.grad.detach().abs().max())
            rows.append(FactorGradient(name, label, backward, g, p.requires_grad, partner_zero))
    return rows


def _train(probe: _Probe, progress: Callable[[int, int], None] | None
           ) -> tuple[list[float], list[FactorGradient], bool]:
    """The probe's steps on the fixed batch: train-mode losses, the gradient rows of the first
    two backwards, and whether every gradient stayed finite."""
    opts, model = probe.opts, probe.subject.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = Adam(params, lr=opts.lr) if params else None
    losses: list[torch.Tensor] = []
    rows: list[FactorGradient] = []
    flags: list[torch.Tensor] = []
    probe.runner.train()
    for step in range(opts.probe_steps):
        torch.manual_seed(opts.seed + 1000 + step)
        loss = probe.objective.loss(probe.objective.outputs(probe.runner), probe.targets_out)
        if loss.requires_grad:
            loss.backward()  # type: ignore[no-untyped-call]
        if step < 2:
            rows.extend(_grad_rows(model, step + 1))
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            flags.append(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if opt is not None:
            opt.step()
            opt.zero_grad()
        losses.append(loss.detach())
        if progress is not None:
            progress(step + 1, opts.probe_steps)
    probe.runner.eval()
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    return values, rows, bool(torch.stack(flags).all()) if flags else True


def _merge(probe: _Probe) -> Merge:
    model = probe.subject.model
    layers = lora_modules(model)
    before = {n: m.base_weight.detach().clone() for n, m in layers}
    seed = probe.opts.seed
    unmerged = probe.outputs(train=False, what="unmerged", seed=seed)[0]
    merge(model)
    merged = probe.outputs(train=False, what="merged", seed=seed)[0]
    again = merge(model)
    unmerge(model)
    eps = torch.finfo(next(iter(before.values())).dtype).eps if before else 0.0
    failures: list[tuple[str, float]] = []
    for name, module in layers:
        w0, w = before[name], module.base_weight.detach()
        err = _max_abs(w, w0)
        scale = float(w0.float().abs().max()) + float(module.delta_weight().float().abs().max())
        if err > 4 * eps * max(scale, 1e-30):
            failures.append((name, err))
        with torch.no_grad():  # continue from the exact trained base, not its rounding
            module.base_weight.copy_(w0)
    return Merge(_max_abs(merged, unmerged), _tol(probe.opts.dtype, unmerged), again,
                 tuple(failures))


def _reload(probe: _Probe, spec: LoraSpec, targets: list[Target], saved_modules: list[str],
            scheme: str, loaded: bool) -> Reload:
    opts = probe.opts
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if opts.save_adapter is not None:
        folder = Path(opts.save_adapter)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="loracheck-verify-")
        folder = Path(tmp.name)
    try:
        save_adapter(probe.subject.model, spec, folder, scheme="kaiming" if loaded else scheme,
                     overwrite=opts.overwrite, saved_modules=saved_modules)
        reference = probe.outputs(train=False, what="before save", seed=opts.seed)[0]
        fresh = probe.subject.factory()
        inject(fresh, spec, targets, saved_modules=saved_modules,
               init=None if loaded else scheme, seed=opts.seed)
        reread = read_peft_dir(folder)
        _, mapping, problems = fit_adapter(fresh, reread)
        load_adapter(fresh, {k: reread.factors[k] for k in mapping}, mapping=mapping)
        load_saved_modules(fresh, folder, saved_modules)
        fresh.eval()
        with torch.no_grad():
            out = probe.objective.outputs(fresh)[0]
        check = tuple(opts.post_save_check(folder)) if opts.post_save_check is not None else ()
        return Reload(_max_abs(out, reference), _tol(opts.dtype, reference), tuple(problems),
                      check, str(folder) if tmp is None else None)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _validate(opts: VerifyOptions) -> None:
    if opts.probe_steps < 1 or opts.lr < 0 or opts.batch_size < 1 or opts.seq_len < 2:
        raise UsageError("--probe-steps must be ≥ 1, --lr ≥ 0, --batch-size ≥ 1, --seq-len ≥ 2")
    if opts.dtype not in DTYPES:
        raise UsageError(f"--dtype {opts.dtype}: expected one of {', '.join(DTYPES)}")
    if opts.save_adapter is not None:
        out = Path(opts.save_adapter)
        if out.is_dir() and any(out.iterdir()) and not opts.overwrite:
            raise UsageError(f"--save-adapter {out}: folder is not empty (use --overwrite)")


def _check_size(model: nn.Module, targets: list[Target]) -> None:
    adapter = sum(t.n_params for t in targets)
    total = sum(p.numel() for p in model.parameters())
    if adapter > MAX_ADAPTER_TO_MODEL * total + 1_000_000:
        worst = max(targets, key=lambda t: t.n_params)
        raise UsageError(
            f"the adapter would hold {adapter:,} parameters ({adapter * 16 / 2**30:.1f} GiB "
            f"with gradients and Adam), {adapter / max(total, 1):.0f}× the model's {total:,} "
            f"(r {worst.rank} on {worst.name}); refused before allocating")


def run_verify(
    opts: VerifyOptions, progress: Callable[[int, int], None] | None = None
) -> ProbeRecord:
    """Measure every verify check on ``opts`` into a record; ``progress(step, total)`` is
    called per probe step."""
    t0 = time.perf_counter()
    _validate(opts)
    dtype = DTYPES[opts.dtype]
    device = _resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    adapter = read_adapter(Path(opts.adapter)) if opts.adapter is not None else None
    spec = _resolve_spec(opts, adapter)
    subject = _subject(opts, device, dtype, spec)
    model = subject.model
    scheme = "loaded" if adapter is not None else _init_scheme(opts, spec)
    base = _base_record(opts, subject, spec, scheme, device, adapter)

    spec = _task_defaults(spec, subject.task)
    mapping: dict[str, str] = {}
    plan = plan_targets(model, spec)
    saved_modules = plan.saved_modules
    if adapter is not None:
        targets, mapping, problems = fit_adapter(model, adapter)
    else:
        targets, problems = plan.targets, []
        if not targets:
            problems = [("target_modules", f"{plan.target_modules!r} selects no Linear, Conv1D "
                         "or Embedding module of the model")]
    refused = _unsupported(spec, adapter, None if adapter is not None else scheme,
                           plan.unsupported)
    if adapter is not None and not adapter.factors:
        problems.append((adapter.path, "the adapter holds no LoRA factor pairs"))
    if problems or refused:
        return _replace(base, fit_problems=tuple(problems), unsupported=tuple(refused),
                        n_modules=len(targets), timing={"total_s": time.perf_counter() - t0})
    _check_size(model, targets)

    runner: nn.Module = torch.compile(model) if opts.compile else model  # type: ignore[assignment]
    device_of = next(model.parameters()).device
    objective = to_device(
        build_objective(subject.task, _fixed_batch(opts, subject), hf=subject.hf,
                        n_labels=subject.n_labels, pixels=subject.pixels, seed=opts.seed),
        device_of, dtype)
    probe = _Probe(opts, subject, runner, objective, [], [])
    ref_eval = probe.outputs(train=False, what="base, eval", seed=opts.seed)
    ref_train = probe.outputs(train=True, what="base, train", seed=opts.seed)[0]
    probe = _Probe(opts, subject, runner, objective,
                   fixed_targets(objective, ref_eval, opts.seed), probe.nonfinite)

    inject(model, spec, targets, saved_modules=saved_modules,
           init=None if adapter is not None else scheme, seed=opts.seed)
    if adapter is not None:
        load_adapter(model, adapter.factors, mapping=mapping)
        if adapter.weights_file is not None:
            load_saved_modules(model, Path(adapter.weights_file), saved_modules)
    if opts.tamper is not None:
        opts.tamper(model)
    t_setup = time.perf_counter()

    identity = _identity(probe, _identity_mode(scheme, adapter, spec, opts.dtype),
                         ref_eval[0], ref_train, opts.seed)
    adapter_ids = _adapter_param_ids(model)
    saved_names = _saved_param_names(model, saved_modules)
    expected = sum(t.n_params for t in targets) + sum(
        p.numel() for m in saved_modules for p in model.get_submodule(m).parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    leaked = tuple(n for n, p in model.named_parameters()
                   if p.requires_grad and id(p) not in adapter_ids and n not in saved_names)
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()
                if id(p) not in adapter_ids and n not in saved_names}

    before = probe.eval_loss("loss before")
    t_probe = time.perf_counter()
    steps, rows, grads_ok = _train(probe, progress)
    t_probe_end = time.perf_counter()
    after = probe.eval_loss("loss after")
    params = dict(model.named_parameters())
    changed = tuple(n for n, p in snapshot.items() if not torch.equal(params[n], p))
    merged = _merge(probe)
    reload = _reload(probe, spec, targets, saved_modules, scheme, adapter is not None)

    nonfinite = list(probe.nonfinite)
    if any(x != x or abs(x) == float("inf") for x in [*steps, before, after]):
        nonfinite.append("loss")
    if not grads_ok:
        nonfinite.append("gradient")
    t_end = time.perf_counter()
    timing = {
        "setup_s": round(t_setup - t0, 4),
        "probe_s": round(t_probe_end - t_probe, 4),
        "step_ms": round(1000 * (t_probe_end - t_probe) / opts.probe_steps, 3),
        "checks_s": round(t_end - t_setup - (t_probe_end - t_probe), 4),
        "total_s": round(t_end - t0, 4),
    }
    return _replace(
        base,
        scales=tuple(_module_scale(m) for _, m in lora_modules(model)),
        n_modules=len(targets),
        identity=identity,
        trainable=trainable,
        expected_trainable=expected,
        leaked=leaked,
        base_changed=changed,
        gradients=tuple(rows),
        losses=Losses(tuple(steps), before, after, opts.min_loss_drop),
        merge=merged,
        reload=reload,
        nonfinite=tuple(dict.fromkeys(nonfinite)),
        timing=timing,
    )


def _module_scale(module: nn.Module) -> float:
    return float(getattr(module, "scaling", 0.0))


def _base_record(opts: VerifyOptions, subject: Subject, spec: LoraSpec, scheme: str,
                 device: str, adapter: AdapterFactors | None) -> ProbeRecord:
    scale = effective_scale(spec.rank, spec.alpha, use_rslora=bool(spec.use_rslora),
                            scale=spec.scale)
    return ProbeRecord(
        model=subject.label,
        task=subject.task,
        device=device,
        dtype=opts.dtype,
        init=scheme,
        rank=spec.rank,
        alpha=spec.alpha,
        dropout=float(spec.dropout or 0.0),
        scales=() if scale is None else (scale,),
        n_modules=0,
        probe_steps=opts.probe_steps,
        lr=opts.lr,
        adapter=str(adapter.path) if adapter is not None else None,
    )


def _replace(record: ProbeRecord, **changes: object) -> ProbeRecord:
    import dataclasses

    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]
