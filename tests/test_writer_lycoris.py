"""Files written by LyCORIS itself (``create_lycoris`` on a small model, ``save_weights``):
LoRA/LoCon, Tucker, LoHa, LoKr and DoRA-weighted modules read with the writer's rank, scale
and ΔW (its own ``get_diff_weight``, float64) to 1e-6 relative; the algorithms that are not
low-rank pairs are recognised by name, never an error for being what they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lycoris")

from loracheck.engine import check_adapter  # noqa: E402
from loracheck.load import load_paths  # noqa: E402
from loracheck.model import MethodKind, Stage  # noqa: E402
from loracheck.settings import Settings  # noqa: E402


class _Attn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
        self.to_v, self.to_out = torch.nn.Linear(32, 32), torch.nn.Linear(32, 64)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn1 = _Attn()
        self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.ff = torch.nn.Linear(32, 64)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block() for _ in range(2)])


def _write(folder: Path, algo: str, trained: bool = True,
           **kwargs: Any) -> tuple[Path, Any, Any]:
    from lycoris import LycorisNetwork, create_lycoris

    torch.manual_seed(0)
    net = _Net()
    LycorisNetwork.apply_preset({"target_module": ["_Attn", "_Block"], "target_name": []})
    network = create_lycoris(net, 1.0, linear_dim=4, linear_alpha=2, algo=algo, **kwargs)
    network.apply_to()
    if trained:  # a trained state: every parameter moved (a fresh LoHa/LoKr has ΔW = 0)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in network.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    path = folder / f"{algo}-{'-'.join(sorted(kwargs)) or 'plain'}.safetensors"
    network.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
    return path, net, network


def _writer_deltas(net: Any, network: Any, algo: str, dora: bool) -> dict[str, np.ndarray]:
    """ΔW (out, in·kh·kw) of each module as the writer's forward pass applies it, in float64:
    the adapted module's output minus the original module's on unit inputs. (LyCORIS 4.1's
    ``get_diff_weight`` applies LoHa's scale twice, its forward once: the forward is what a
    model computes.)"""
    net.to(torch.float64)
    network.to(torch.float64)
    modules = dict(net.named_modules())
    out = {}
    with torch.no_grad():
        for lyco in network.loras:
            if algo == "full":  # the diff is ΔW itself (no scale for get_diff_weight to repeat)
                diff, _ = lyco.get_diff_weight(multiplier=1.0)
                out[lyco.lora_name] = diff.double().reshape(diff.shape[0], -1).numpy()
                continue
            if dora:  # the low-rank update s·up·down, before DoRA's renormalisation
                up = lyco.lora_up.weight.reshape(lyco.lora_up.weight.shape[0], -1)
                down = lyco.lora_down.weight.reshape(lyco.lora_down.weight.shape[0], -1)
                out[lyco.lora_name] = (float(lyco.scale) * up @ down).numpy()
                continue
            original = lyco.org_module[0]
            wrapped = next(m for m in modules.values() if m is original)
            if isinstance(original, torch.nn.Linear):
                x = torch.eye(original.in_features, dtype=torch.float64)
                delta = (wrapped(x) - lyco.org_forward(x)).T
            else:  # a 3×3 conv, padding 1: a unit 3×3 input's centre output is W[:, i, h, w]
                n_in = original.in_channels
                x = torch.eye(n_in * 9, dtype=torch.float64).reshape(n_in * 9, n_in, 3, 3)
                delta = (wrapped(x) - lyco.org_forward(x))[:, :, 1, 1].T
            out[lyco.lora_name] = delta.numpy()
    return out


@pytest.mark.parametrize(("algo", "kwargs", "delta_from"), [
    ("lora", {}, "low-rank"),
    ("lora", {"use_tucker": True, "conv_dim": 4, "conv_alpha": 2}, "low-rank"),
    ("loha", {}, "hadamard"),
    ("lokr", {"factor": 4}, "kronecker"),
    ("lokr", {"factor": 4, "decompose_both": True}, "kronecker"),
    ("lora", {"dora_wd": True}, "low-rank"),
    ("full", {}, "materialised"),
])
def test_statistics_equal_the_writers_delta(tmp_path: Path, algo: str, kwargs: dict[str, Any],
                                            delta_from: str) -> None:
    path, net, network = _write(tmp_path, algo, **kwargs)
    truth = _writer_deltas(net, network, algo, bool(kwargs.get("dora_wd")))
    (adapter,) = load_paths([str(path)])
    layers = {layer.name: layer for layer in adapter.layers}
    assert set(layers) == set(truth) and len(truth) == 12
    for name, delta in truth.items():
        layer = layers[name]
        assert layer.delta is not None and layer.delta_from == delta_from, name
        assert (layer.out_features, layer.in_features) == delta.shape, name
        assert layer.delta.frobenius == pytest.approx(float(np.linalg.norm(delta)), rel=1e-6)
        sigma = np.linalg.svd(delta, compute_uv=False)
        got = np.array(layer.delta.singular_values[: min(8, sigma.size)])
        assert np.allclose(got, sigma[: got.size], rtol=1e-6, atol=1e-12 * sigma[0]), name
        module = next(m for m in network.loras if m.lora_name == name)
        if algo != "full":  # a full diff has no scale
            assert layer.scaling == pytest.approx(float(module.scale), rel=1e-12), name
    if algo != "full":
        assert adapter.stage is Stage.TRAINED
    assert not [d for d in check_adapter(adapter, Settings()) if d.severity.value != "info"]


def test_a_fresh_loha_is_at_init(tmp_path: Path) -> None:
    path, _, _ = _write(tmp_path, "loha", trained=False)
    (adapter,) = load_paths([str(path)])
    assert adapter.stage is Stage.INIT and adapter.layers[0].rank == 4


@pytest.mark.parametrize(("algo", "name"), [
    ("full", "LyCORIS full (diff)"), ("diag-oft", "LyCORIS diag-OFT"), ("boft", "LyCORIS BOFT"),
    ("ia3", "LyCORIS (IA)³"), ("glora", "LyCORIS GLoRA"),
])
def test_other_algorithms_are_named_not_errors(tmp_path: Path, algo: str, name: str) -> None:
    path, _, _ = _write(tmp_path, algo)
    (adapter,) = load_paths([str(path)])
    assert adapter.method is MethodKind.OTHER and adapter.method_name == name
    found = check_adapter(adapter, Settings())
    assert [d.code for d in found] == ["LC110"]
    (walked,) = load_paths([str(tmp_path)])  # walked in a folder, it is there too
    assert walked.method_name == name
    if algo == "ia3":  # the statistics that mean something: each module's scaling vector
        assert len(adapter.layers) == 12
        assert all(layer.a_stats is not None and layer.a_stats.std > 0
                   for layer in adapter.layers)
