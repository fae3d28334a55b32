"""``loracheck verify``: prove on a live model what the static checks can only suspect.

A run builds the model (the built-in tiny decoder, or a local transformers folder), puts the
reference LoRA on it (from ``--config``, else the adapter's config, else a profile), optionally
loads an existing adapter, and then checks, each with its own code:

    LC308  the adapter fits the model (modules exist, shapes match)
    LC207  an adapter given with --adapter changes the outputs at all
    LC301  identity at step 0 (train and eval mode)
    LC303  only the adapter is trainable, the trainable count is what the shapes imply, and no
           base weight changes during the probe (bit for bit)
    LC304  every factor gets a gradient (B after the first backward, A after the second)
    LC302  the probe loss falls (mean of the last 3 at least 5% below the first)
    LC307  no non-finite loss, gradient or output
    LC305  merged and unmerged outputs agree; unmerge restores W
    LC306  the adapter saved in PEFT's format and reloaded into a fresh model gives the same
           outputs (and, through ``post_save_check``, passes ``loracheck check``)

torch is imported here and under :mod:`loracheck.reference` only; the CLI imports this module
lazily inside its ``verify`` command.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loracheck.errors import UsageError
from loracheck.model import Diagnostic, InitScheme, LoraSpec, MethodKind, Severity
from loracheck.reference.hf import LoadedModel, load_hf_model
from loracheck.reference.init import ZERO_FACTOR_SCHEMES, scheme_from_peft
from loracheck.reference.inject import Target, inject, lora_modules, merge, unmerge
from loracheck.reference.peft_format import (
    AdapterFactors,
    fit_adapter,
    load_adapter,
    read_adapter,
    read_peft_dir,
    save_adapter,
    spec_from_peft_json,
)
from loracheck.reference.tinymodel import PROBE_TEXT, build_tiny, encode_bytes
from loracheck.rules.context import HELP_URL
from loracheck.rules.registry import get_rule


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
        target_modules=list(recipe.target_modules),
    )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Relative tolerance on outputs, per dtype: |Δ| ≤ tol · max(1, max |reference|).
OUTPUT_TOL = {torch.float32: 2e-5, torch.bfloat16: 5e-2, torch.float16: 5e-3}




@dataclass
class VerifyOptions:
    """The flags of ``loracheck verify``, plus hooks the CLI (and tests) fill.

    ``spec`` is a LoRA spec the caller already read (the CLI reads ``--config`` with the core's
    config loaders and passes the result here); without it ``config`` is read as a PEFT
    ``adapter_config.json``. ``post_save_check`` runs on the saved adapter folder (the CLI
    passes ``loracheck check``); its error diagnostics fail LC306. ``tamper`` is called on the
    injected model before the probe: a hook for planted-fault tests.
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
    min_loss_drop: float = 0.05
    spec: LoraSpec | None = None
    post_save_check: Callable[[Path], list[Diagnostic]] | None = None
    tamper: Callable[[nn.Module], None] | None = None


@dataclass
class CheckResult:
    """One check: its name, whether it passed, and the numbers it measured."""

    name: str
    passed: bool
    numbers: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "code": self.code, "passed": self.passed}
        if self.skipped:
            out["skipped"] = True
        out.update(self.numbers)
        return out


@dataclass
class VerifyResult:
    checks: list[CheckResult] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    # What ran: model, device, dtype, init scheme, rank/alpha, number of adapted modules.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and not any(
            d.severity == Severity.ERROR for d in self.diagnostics
        )

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; non-finite floats become the strings "nan", "inf", "-inf"."""
        return {
            "checks": [_json_safe(c.to_dict()) for c in self.checks],
            "diagnostics": [_diag_dict(d) for d in self.diagnostics],
            "timing": dict(self.timing),
        }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _diag_dict(diag: Diagnostic) -> dict[str, Any]:
    out = asdict(diag)
    out["severity"] = diag.severity.value
    return out


# --- the model under test -------------------------------------------------------------------


@dataclass
class _Subject:
    """A model and how to call it, build a fresh copy of it, and score it."""

    model: nn.Module
    label: str
    causal: bool
    factory: Callable[[], nn.Module]
    encode: Callable[[str], list[int]]
    hf: bool
    vocab_size: int


def _resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available here")
    return name


def _subject(opts: VerifyOptions, device: str, dtype: torch.dtype) -> _Subject:
    if opts.model == "builtin":

        def build() -> nn.Module:
            return build_tiny(opts.seed).to(device=device, dtype=dtype)

        return _Subject(build(), "builtin", True, build, encode_bytes, False, 256)
    path = Path(opts.model)
    if not path.exists():
        raise UsageError(f"--model {path}: no such folder")

    def load() -> LoadedModel:
        return load_hf_model(path, dtype=dtype, device=device, device_map=opts.device_map)

    first = load()
    return _Subject(
        first.model,
        str(path),
        first.causal,
        lambda: load().model,
        first.encode,
        True,
        first.vocab_size,
    )


def _call(model: nn.Module, ids: torch.Tensor, *, hf: bool, causal: bool) -> torch.Tensor:
    if not hf:
        return model(ids)  # type: ignore[no-any-return]
    out = model(input_ids=ids)
    return out.logits if causal else out.last_hidden_state  # type: ignore[no-any-return]


def _resolve_spec(opts: VerifyOptions, adapter: AdapterFactors | None) -> LoraSpec:
    if opts.spec is not None:
        return _lora_only(opts.spec, str(opts.config or opts.spec.path))
    if opts.config is not None:
        path = Path(opts.config)
        if path.is_dir():
            path = path / "adapter_config.json"
        if not path.is_file():
            raise UsageError(f"--config {opts.config}: no such file")
        try:
            from loracheck.configs import read_spec
        except ImportError:  # a build without the core's config readers: PEFT JSON only
            if path.suffix != ".json":
                raise UsageError(f"--config {path}: expected a PEFT adapter_config.json") from None
            return spec_from_peft_json(path)
        return _lora_only(read_spec(path), str(path))
    if adapter is not None and adapter.spec is not None:
        return adapter.spec
    return profile_spec(opts.profile)


def _lora_only(spec: LoraSpec, where: str) -> LoraSpec:
    """``spec`` when it configures the LoRA family; another method is a usage error."""
    if spec.method is not MethodKind.LORA:
        raise UsageError(f"--config {where}: it trains {spec.method_name}, not LoRA; "
                         "verify probes LoRA adapters only")
    return spec


def _token_stream(opts: VerifyOptions, subject: _Subject) -> torch.Tensor:
    if opts.data is not None:
        try:
            text = Path(opts.data).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"--data {opts.data}: {exc.strerror or exc}") from None
    else:
        text = PROBE_TEXT
    ids = subject.encode(text)
    if not ids:
        raise UsageError("the probe text is empty")
    need = opts.seq_len + 1
    if len(ids) < need:
        ids = ids * (need // len(ids) + 1)
    return torch.tensor(ids, dtype=torch.long)


def _batches(stream: torch.Tensor, opts: VerifyOptions, count: int) -> list[torch.Tensor]:
    """``count`` batches of random windows (b, seq_len), drawn from one seeded generator."""
    gen = torch.Generator().manual_seed(opts.seed)
    high = len(stream) - opts.seq_len + 1
    out = []
    for _ in range(count):
        starts = torch.randint(0, high, (opts.batch_size,), generator=gen)
        out.append(torch.stack([stream[s : s + opts.seq_len] for s in starts.tolist()]))
    return out


# --- helpers --------------------------------------------------------------------------------


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _tol(dtype: torch.dtype, ref: torch.Tensor) -> float:
    return OUTPUT_TOL[dtype] * max(1.0, float(ref.float().abs().max()))


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


class _Run:
    """The state of one verify run: options, subject, outputs and the result being filled."""

    def __init__(self, opts: VerifyOptions, progress: Callable[[int, int], None] | None) -> None:
        self.opts = opts
        self.progress = progress
        self.result = VerifyResult()
        self.nonfinite: list[str] = []

    def diag(
        self,
        code: str,
        message: str,
        *,
        location: str | None = None,
        severity: Severity = Severity.ERROR,
        help: str | None = None,
    ) -> None:
        # Names and help pages come from the one rule registry (rules/probe.py, rules/weights.py).
        meta = get_rule(code)
        self.result.diagnostics.append(
            Diagnostic(
                code=code,
                name=meta.name if meta is not None else code,
                severity=severity,
                path=self.label,
                message=message,
                location=location,
                help=help or HELP_URL.format(code=code),
            )
        )

    def add(self, name: str, code: str, passed: bool, **numbers: Any) -> CheckResult:
        check = CheckResult(name, passed, numbers, code)
        self.result.checks.append(check)
        return check

    def output(self, ids: torch.Tensor, *, train: bool, what: str) -> torch.Tensor:
        self.runner.train(train)
        if train:
            torch.manual_seed(self.opts.seed + 1)
        with torch.no_grad():
            out = _call(self.runner, ids, hf=self.subject.hf, causal=self.subject.causal)
        if not _finite(out):
            self.nonfinite.append(f"output ({what})")
        return out

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        out = _call(self.runner, ids, hf=self.subject.hf, causal=self.subject.causal)
        if self.subject.causal:
            logits = out[:, :-1].float()
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        return F.mse_loss(out.float(), self.target.expand_as(out))

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> VerifyResult:
        opts = self.opts
        t0 = time.perf_counter()
        if opts.probe_steps < 0 or opts.lr < 0 or opts.batch_size < 1 or opts.seq_len < 2:
            raise UsageError("probe steps and lr must be ≥ 0, batch size ≥ 1, seq len ≥ 2")
        if opts.dtype not in DTYPES:
            raise UsageError(f"--dtype {opts.dtype}: expected one of {', '.join(DTYPES)}")
        if opts.save_adapter is not None:
            out = Path(opts.save_adapter)
            if out.is_dir() and any(out.iterdir()) and not opts.overwrite:
                raise UsageError(f"--save-adapter {out}: folder is not empty (use --overwrite)")
        self.dtype = DTYPES[opts.dtype]
        self.device = _resolve_device(opts.device)
        torch.manual_seed(opts.seed)
        adapter = read_adapter(Path(opts.adapter)) if opts.adapter is not None else None
        self.spec = _resolve_spec(opts, adapter)
        self.subject = _subject(opts, self.device, self.dtype)
        self.label = self.subject.label
        model = self.subject.model
        self.runner: nn.Module = torch.compile(model) if opts.compile else model  # type: ignore[assignment]
        stream = _token_stream(opts, self.subject)
        self.batches = _batches(stream, opts, max(opts.probe_steps, 1))
        device_of = next(model.parameters()).device
        self.batches = [b.to(device_of) for b in self.batches]
        check_ids = self.batches[0]
        self.target = torch.zeros(())
        if not self.subject.causal:
            # The generic objective: pull every position's output towards one fixed random
            # vector (reachable by a low-rank update, so a working adapter lowers the loss).
            with torch.no_grad():
                width = _call(model, check_ids, hf=True, causal=False).shape[-1]
            gen = torch.Generator().manual_seed(opts.seed + 2)
            self.target = torch.randn(width, generator=gen).to(device_of)

        targets: list[Target] | None = None
        mapping: dict[str, str] = {}
        if adapter is not None:
            targets, mapping, problems = fit_adapter(model, adapter)
            self.add(
                "fit",
                "LC308",
                not problems and bool(targets),
                modules=len(adapter.factors),
                fitted=len(targets),
                problems=len(problems),
            )
            for key, why in problems:
                self.diag("LC308", f"adapter module {key}: {why}", location=key)
            if not adapter.factors:
                self.diag("LC308", "the adapter holds no LoRA factor pairs")
            if problems or not targets:
                self.result.timing = {"total_s": time.perf_counter() - t0}
                self._meta(0, "-")
                return self.result

        ref_eval = self.output(check_ids, train=False, what="base, eval")
        ref_train = self.output(check_ids, train=True, what="base, train")
        self.scheme = (
            "loaded"
            if adapter is not None
            else (
                opts.init
                or scheme_from_peft(self.spec.init_lora_weights, init_std=self.spec.init_std)
            )
        )
        self.targets = inject(
            model,
            self.spec,
            init=None if adapter is not None else self.scheme,
            seed=opts.seed,
            targets=targets,
        )
        if adapter is not None:
            load_adapter(model, adapter.factors, mapping=mapping)
        if opts.tamper is not None:
            opts.tamper(model)
        self._meta(len(self.targets), self.scheme)
        t_setup = time.perf_counter()

        if adapter is None:
            self._identity(check_ids, ref_eval, ref_train)
        else:
            self._effect(check_ids, ref_eval)
        self._trainable()
        snapshot = self._snapshot(model)
        losses, grads_ok, t_probe = self._probe()
        t_probe_end = time.perf_counter()
        self._loss(losses)
        self._base_unchanged(snapshot)
        self._merge(check_ids)
        self._save_reload(check_ids, adapter)
        self._nonfinite(losses, grads_ok)
        self._order()
        t_end = time.perf_counter()
        steps = max(opts.probe_steps, 1)
        self.result.timing = {
            "setup_s": round(t_setup - t0, 4),
            "probe_s": round(t_probe_end - t_probe, 4),
            "step_ms": round(1000 * (t_probe_end - t_probe) / steps, 3),
            "checks_s": round(t_end - t_setup - (t_probe_end - t_probe), 4),
            "total_s": round(t_end - t0, 4),
        }
        return self.result

    def _meta(self, n_modules: int, scheme: str) -> None:
        self.result.meta = {
            "model": self.label,
            "device": self.device,
            "dtype": self.opts.dtype,
            "init": scheme,
            "rank": self.spec.rank,
            "alpha": self.spec.alpha,
            "dropout": self.spec.dropout,
            "modules": n_modules,
            "probe_steps": self.opts.probe_steps,
            "lr": self.opts.lr,
        }

    # -- LC301 / LC207 ---------------------------------------------------------------------

    def _identity(self, ids: torch.Tensor, ref_eval: torch.Tensor, ref_train: torch.Tensor) -> None:
        d_eval = _max_abs(self.output(ids, train=False, what="adapted, eval"), ref_eval)
        d_train = _max_abs(self.output(ids, train=True, what="adapted, train"), ref_train)
        tol = _tol(self.dtype, ref_eval)
        zero_factor = self.scheme in ZERO_FACTOR_SCHEMES or self.scheme == "zeros"
        exact = zero_factor and self.dtype == torch.float32
        if exact:
            passed = d_eval == 0.0 and d_train == 0.0
        elif zero_factor or (self.spec.dropout or 0.0) == 0.0:
            passed = d_eval <= tol and d_train <= tol
        else:  # PiSSA-like with dropout: only eval mode is an identity
            passed = d_eval <= tol
        self.add(
            "identity",
            "LC301",
            passed,
            eval_max_abs=d_eval,
            train_max_abs=d_train,
            tolerance=0.0 if exact else tol,
            init=self.scheme,
        )
        if not passed:
            self.diag(
                "LC301",
                f"the adapted model differs from the base at step 0 (max |Δlogit| "
                f"{max(d_eval, d_train):.3g} with init {self.scheme}); LoRA must start as "
                "the identity",
                help="initialise B = 0 (or use a residual base for PiSSA)",
            )

    def _effect(self, ids: torch.Tensor, ref_eval: torch.Tensor) -> None:
        delta = _max_abs(self.output(ids, train=False, what="adapted, eval"), ref_eval)
        self.add("effect", "LC207", delta > 0.0, eval_max_abs=delta)
        if delta == 0.0:
            self.diag(
                "LC207",
                "the adapter does not change the model's outputs at all (every update B·A is zero)",
                severity=Severity.WARNING,
            )

    # -- LC303 -----------------------------------------------------------------------------

    def _adapter_params(self) -> set[int]:
        ids: set[int] = set()
        for _, module in lora_modules(self.subject.model):
            ids.add(id(module.factor_a))
            ids.add(id(module.factor_b))
        return ids

    def _trainable(self) -> None:
        model = self.subject.model
        adapter_ids = self._adapter_params()
        expected = sum(t.n_params for t in self.targets)
        actual = sum(p.numel() for p in model.parameters() if p.requires_grad)
        leaked = [
            n for n, p in model.named_parameters() if p.requires_grad and id(p) not in adapter_ids
        ]
        self._leaked = leaked
        self._expected, self._actual = expected, actual
        for name in leaked:
            self.diag(
                "LC303",
                f"base parameter {name} requires grad: it will be trained",
                location=name,
                help="freeze every parameter that is not a LoRA factor",
            )
        if actual != expected and not leaked:
            self.diag(
                "LC303",
                f"{actual} trainable parameters, but the spec and the shapes imply {expected}",
            )

    def _snapshot(self, model: nn.Module) -> dict[str, torch.Tensor]:
        adapter_ids = self._adapter_params()
        return {
            n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in adapter_ids
        }

    def _base_unchanged(self, snapshot: dict[str, torch.Tensor]) -> None:
        params = dict(self.subject.model.named_parameters())
        changed = [n for n, before in snapshot.items() if not torch.equal(params[n], before)]
        for name in changed:
            self.diag("LC303", f"base parameter {name} changed during the probe", location=name)
        passed = not changed and not self._leaked and self._actual == self._expected
        self.add(
            "only-adapter-learns",
            "LC303",
            passed,
            trainable=self._actual,
            expected_trainable=self._expected,
            non_adapter_trainable=len(self._leaked),
            base_changed=len(changed),
        )

    # -- the probe, LC304 ------------------------------------------------------------------

    def _grad_state(self) -> list[tuple[str, str, float | None, bool, bool]]:
        """Per factor: (module, "A"/"B", |grad|max or None, requires_grad, partner is zero)."""
        rows: list[tuple[str, str, float | None, bool, bool]] = []
        for name, module in lora_modules(self.subject.model):
            a, b = module.factor_a, module.factor_b
            a_zero, b_zero = not bool(a.detach().any()), not bool(b.detach().any())
            for label, p, partner_zero in (("A", a, b_zero), ("B", b, a_zero)):
                g = None if p.grad is None else float(p.grad.detach().abs().max())
                rows.append((name, label, g, p.requires_grad, partner_zero))
        return rows

    def _probe(self) -> tuple[list[float], bool, float]:
        opts = self.opts
        model = self.subject.model
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=opts.lr) if params else None
        self.runner.train()
        torch.manual_seed(opts.seed)
        losses: list[torch.Tensor] = []
        grad_flags: list[torch.Tensor] = []
        states: list[list[tuple[str, str, float | None, bool, bool]]] = []
        t_start = time.perf_counter()
        for step in range(opts.probe_steps):
            loss = self.loss(self.batches[step])
            if loss.requires_grad:
                loss.backward()  # type: ignore[no-untyped-call]
            if step < 2:
                states.append(self._grad_state())
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                grad_flags.append(torch.stack([torch.isfinite(g).all() for g in grads]).all())
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if self.progress is not None:
                self.progress(step + 1, opts.probe_steps)
        self.runner.eval()
        values = torch.stack(losses).float().cpu().tolist() if losses else []
        grads_ok = bool(torch.stack(grad_flags).all()) if grad_flags else True
        self._gradients(states)
        return values, grads_ok, t_start

    def _gradients(self, states: list[list[tuple[str, str, float | None, bool, bool]]]) -> None:
        failures: list[str] = []
        expected_zero = 0
        for step, rows in enumerate(states, start=1):
            for module, label, g, trainable, partner_zero in rows:
                where = f"{module}.lora_{label}"
                if not trainable:
                    if step == 1:
                        failures.append(where)
                        self.diag("LC304", f"{where} is frozen: it never learns", location=where)
                    continue
                if g is None:
                    if step == 1:
                        failures.append(where)
                        self.diag("LC304", f"{where} got no gradient", location=where)
                    continue
                if partner_zero:
                    # A zero partner makes this gradient exactly zero: expected (B = 0 at init).
                    expected_zero += g == 0.0
                    if g != 0.0:
                        failures.append(where)
                        self.diag(
                            "LC304",
                            f"{where} has a gradient although its partner factor is zero",
                            location=where,
                        )
                elif g == 0.0:
                    failures.append(where)
                    self.diag(
                        "LC304",
                        f"{where} has a zero gradient after backward {step}",
                        location=where,
                    )
        n_factors = 2 * len(self.targets)
        self.add(
            "gradients",
            "LC304",
            not failures,
            factors=n_factors,
            backwards=len(states),
            expected_zero=expected_zero,
            failing=len(failures),
        )

    # -- LC302 / LC307 ---------------------------------------------------------------------

    def _loss(self, losses: list[float]) -> None:
        if len(losses) < 2:
            self.result.checks.append(
                CheckResult("loss-falls", True, {"steps": len(losses)}, "LC302", skipped=True)
            )
            return
        first = losses[0]
        last = sum(losses[-3:]) / len(losses[-3:])
        finite = math.isfinite(first) and math.isfinite(last)
        drop = (first - last) / abs(first) if finite and first != 0 else float("nan")
        passed = finite and drop >= self.opts.min_loss_drop
        self.add(
            "loss-falls",
            "LC302",
            passed,
            first=first,
            last3_mean=last,
            drop=drop,
            threshold=self.opts.min_loss_drop,
            losses=[round(x, 6) for x in losses],
        )
        if finite and not passed:
            self.diag(
                "LC302",
                f"the probe loss fell {100 * drop:.1f}% in {len(losses)} steps "
                f"({first:.4g} → {last:.4g}); at least {100 * self.opts.min_loss_drop:g}% "
                "was expected",
                help="check the learning rate and that B is trainable",
            )

    def _nonfinite(self, losses: list[float], grads_ok: bool) -> None:
        bad = list(self.nonfinite)
        if any(not math.isfinite(x) for x in losses):
            bad.append("loss")
        if not grads_ok:
            bad.append("gradient")
        self.add("finite", "LC307", not bad, nonfinite=bad)
        for what in bad:
            self.diag("LC307", f"a non-finite {what} appeared during verify", location=what)

    # -- LC305 -----------------------------------------------------------------------------

    def _merge(self, ids: torch.Tensor) -> None:
        model = self.subject.model
        layers = lora_modules(model)
        before = {n: m.base_layer.weight.detach().clone() for n, m in layers}
        unmerged = self.output(ids, train=False, what="unmerged")
        merge(model)
        merged = self.output(ids, train=False, what="merged")
        again = merge(model)
        unmerge(model)
        d_out = _max_abs(merged, unmerged)
        tol = _tol(self.dtype, unmerged)
        eps = torch.finfo(self.dtype).eps
        worst, worst_layer = 0.0, ""
        restore_ok = True
        for name, module in layers:
            w0, w = before[name], module.base_layer.weight.detach()
            err = _max_abs(w, w0)
            scale = float(w0.float().abs().max()) + float(module.delta_weight().float().abs().max())
            if err > 4 * eps * max(scale, 1e-30):
                restore_ok = False
                self.diag(
                    "LC305",
                    f"unmerge does not restore {name}.weight (max |ΔW| {err:.3g})",
                    location=name,
                )
            if err >= worst:
                worst, worst_layer = err, name
            with torch.no_grad():  # continue from the exact trained base, not its rounding
                module.base_layer.weight.copy_(w0)
        passed = d_out <= tol and again == 0 and restore_ok
        self.add(
            "merge",
            "LC305",
            passed,
            merged_max_abs=d_out,
            tolerance=tol,
            second_merge_changed=again,
            unmerge_max_abs=worst,
            unmerge_worst=worst_layer,
        )
        if d_out > tol:
            self.diag(
                "LC305", f"merged and unmerged outputs differ by {d_out:.3g} (tolerance {tol:.3g})"
            )
        if again:
            self.diag("LC305", f"merging twice changed {again} layers again")

    # -- LC306 -----------------------------------------------------------------------------

    def _save_reload(self, ids: torch.Tensor, adapter: AdapterFactors | None) -> None:
        opts = self.opts
        tmp: tempfile.TemporaryDirectory[str] | None = None
        if opts.save_adapter is not None:
            folder = Path(opts.save_adapter)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="loracheck-verify-")
            folder = Path(tmp.name)
        try:
            scheme = "kaiming" if adapter is not None else self.scheme
            save_adapter(
                self.subject.model, self.spec, folder, scheme=scheme, overwrite=opts.overwrite
            )
            reference = self.output(ids, train=False, what="before save")
            fresh = self.subject.factory()
            inject(
                fresh,
                self.spec,
                init=None if adapter is not None else self.scheme,
                seed=opts.seed,
                targets=self.targets,
            )
            reread = read_peft_dir(folder)
            _, mapping, problems = fit_adapter(fresh, reread)
            for key, why in problems:
                self.diag("LC306", f"saved module {key} does not reload: {why}", location=key)
            load_adapter(fresh, {k: reread.factors[k] for k in mapping}, mapping=mapping)
            fresh.eval()
            with torch.no_grad():
                out = _call(fresh, ids, hf=self.subject.hf, causal=self.subject.causal)
            d_out = _max_abs(out, reference)
            tol = _tol(self.dtype, reference)
            extra: list[Diagnostic] = []
            if opts.post_save_check is not None:
                extra = list(opts.post_save_check(folder))
                self.result.diagnostics.extend(extra)
            errors = sum(d.severity == Severity.ERROR for d in extra)
            passed = d_out <= tol and not problems and errors == 0
            self.add(
                "save-reload",
                "LC306",
                passed,
                reload_max_abs=d_out,
                tolerance=tol,
                saved_to=str(folder) if tmp is None else None,
                check_errors=errors,
            )
            if d_out > tol:
                self.diag(
                    "LC306",
                    f"the reloaded adapter gives outputs {d_out:.3g} away from "
                    f"the trained one (tolerance {tol:.3g})",
                )
            if errors:
                self.diag(
                    "LC306", f"`loracheck check` reports {errors} error(s) on the saved adapter"
                )
        finally:
            if tmp is not None:
                tmp.cleanup()

    def _order(self) -> None:
        order = [
            "fit",
            "effect",
            "identity",
            "only-adapter-learns",
            "gradients",
            "loss-falls",
            "merge",
            "save-reload",
            "finite",
        ]
        self.result.checks.sort(key=lambda c: order.index(c.name) if c.name in order else 99)


def run_verify(
    opts: VerifyOptions, progress: Callable[[int, int], None] | None = None
) -> VerifyResult:
    """Run every verify check on ``opts``; ``progress(step, total)`` is called per probe step."""
    return _Run(opts, progress).run()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "0" if value == 0 else f"{value:.4g}"
    if isinstance(value, list):
        return f"[{len(value)} values]" if len(value) > 4 else str(value)
    return str(value)


def render_verify_text(result: VerifyResult) -> str:
    """A plain-text report: one line per check with its numbers, then diagnostics, timing."""
    meta = result.meta
    lines = []
    if meta:
        lines.append(
            f"loracheck verify: {meta.get('model')} on {meta.get('device')} ({meta.get('dtype')}), "
            f"{meta.get('modules')} LoRA modules, init {meta.get('init')}, r {meta.get('rank')}, "
            f"alpha {_fmt(meta.get('alpha'))}, {meta.get('probe_steps')} probe steps at lr "
            f"{_fmt(meta.get('lr'))}"
        )
    for check in result.checks:
        status = "skip" if check.skipped else ("pass" if check.passed else "FAIL")
        numbers = "  ".join(
            f"{k}={_fmt(v)}" for k, v in check.numbers.items() if v is not None and k != "losses"
        )
        lines.append(f"  {status:4}  {check.code:5}  {check.name:20} {numbers}".rstrip())
    if result.diagnostics:
        lines.append("")
        for d in result.diagnostics:
            where = f" [{d.location}]" if d.location else ""
            lines.append(f"{d.path}: {d.code} {d.severity.value} {d.name}{where}: {d.message}")
    timing = result.timing
    if timing:
        parts = ", ".join(
            f"{k.removesuffix('_s')} {v:.2f} s" for k, v in timing.items() if k.endswith("_s")
        )
        lines.append("")
        lines.append(f"time: {parts}")
    verdict = "verify passed" if result.passed else "verify FAILED"
    lines.append(verdict)
    return "\n".join(lines) + "\n"
