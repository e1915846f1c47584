import pytest
import torch

from pretrain.config import OptimConfig, RuntimeConfig
from pretrain.runtime.distributed import init_distributed
from pretrain.runtime.engine import build_engine
from pretrain.runtime.optim import param_groups


@pytest.mark.parametrize("engine,stage,precision", [
    ("plain", 0, "fp32"), ("deepspeed", 0, "fp32"), ("deepspeed", 0, "bf16"),
    ("deepspeed", 1, "fp32")])
def test_grad_norm_is_logged_by_every_engine_without_clipping(engine, stage, precision):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    ref = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    ref_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),
                                    torch.nn.Linear(16, 3))
    for p, r in zip(ref_model.parameters(), ref):
        p.data.copy_(r)
    torch.nn.functional.cross_entropy(ref_model(x), y).backward()
    want = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in
                                                 ref_model.parameters()]))
    e = build_engine(model, param_groups(model, 0.0), OptimConfig(lr=1e-3),
                     RuntimeConfig(engine=engine, zero_stage=stage, precision=precision),
                     init_distributed("cpu"), 4)
    xin = x.bfloat16() if engine == "deepspeed" and precision == "bf16" else x
    loss = torch.nn.functional.cross_entropy(e(xin).float(), y)
    e.backward(loss)
    e.step()
    assert e.grad_norm is not None
    assert abs(float(e.grad_norm) - float(want)) < (0.05 if precision == "bf16" else 1e-4)


def test_precision_auto_picks_bf16_only_where_it_is_fast(monkeypatch, capsys):
    from pretrain.runtime import engine
    cpu = torch.device("cpu")
    monkeypatch.setattr(engine, "cpu_has_fast_bf16", lambda: False)
    assert engine.resolve_precision("auto", cpu) == "fp32"
    assert engine.resolve_precision("bf16", cpu) == "bf16"      # runs, but says so
    assert "many times slower" in capsys.readouterr().err
    monkeypatch.setattr(engine, "cpu_has_fast_bf16", lambda: True)
    assert engine.resolve_precision("auto", cpu) == "bf16"
    assert engine.resolve_precision("bf16", cpu) == "bf16"
    assert capsys.readouterr().err == ""
    assert engine.resolve_precision("fp32", cpu) == "fp32"
    e = build_engine(torch.nn.Linear(2, 2), param_groups(torch.nn.Linear(2, 2), 0.0),
                     OptimConfig(lr=1e-3), RuntimeConfig(engine="plain", precision="auto"),
                     init_distributed("cpu"), 1)
    assert e.precision == "bf16"
