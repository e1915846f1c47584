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


CPU_FLAGS = {  # the flags lines of three CPUs, cut to what matters here
    "amx": "fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8",
    "avx512_bf16": "fpu sse2 avx2 avx512f avx512_bf16",
    "neither": "fpu sse2 avx2 avx512f avx512_vnni",
}


@pytest.mark.parametrize("cpu_kind,want", [("amx", "bf16"), ("avx512_bf16", "bf16"),
                                           ("neither", "fp32")])
def test_precision_auto_picks_bf16_only_where_it_is_fast(cpu_kind, want, tmp_path, monkeypatch,
                                                         capsys):
    from pretrain.runtime import engine
    monkeypatch.delenv(engine.AUTO_PRECISION_ENV, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: x\nflags\t\t: {CPU_FLAGS[cpu_kind]}\n"
                       f"bogomips\t: 1\n\nprocessor\t: 1\nflags\t\t: {CPU_FLAGS[cpu_kind]}\n")
    cpu = torch.device("cpu")
    assert engine.cpu_has_fast_bf16(str(cpuinfo)) == (want == "bf16")
    assert engine.resolve_precision("auto", cpu, str(cpuinfo)) == want
    assert engine.resolve_precision("fp32", cpu, str(cpuinfo)) == "fp32"
    assert engine.resolve_precision("bf16", cpu, str(cpuinfo)) == "bf16"   # runs either way
    slow = "many times slower" in capsys.readouterr().err                  # ... and says so
    assert slow == (want == "fp32")
    # the engine a run gets follows the same resolution
    monkeypatch.setattr(engine, "CPUINFO", str(cpuinfo))
    e = build_engine(torch.nn.Linear(2, 2), param_groups(torch.nn.Linear(2, 2), 0.0),
                     OptimConfig(lr=1e-3), RuntimeConfig(engine="plain", precision="auto"),
                     init_distributed("cpu"), 1)
    assert e.precision == want


def test_an_unreadable_cpuinfo_means_no_fast_bf16(tmp_path, monkeypatch):
    from pretrain.runtime import engine
    monkeypatch.delenv(engine.AUTO_PRECISION_ENV, raising=False)
    missing = str(tmp_path / "no-cpuinfo")
    assert not engine.cpu_has_fast_bf16(missing)
    assert engine.resolve_precision("auto", torch.device("cpu"), missing) == "fp32"


@pytest.mark.parametrize("forced", ["bf16", "fp32"])
def test_the_test_only_override_decides_auto_on_any_cpu(forced, tmp_path, monkeypatch):
    from pretrain.runtime import engine
    monkeypatch.setenv(engine.AUTO_PRECISION_ENV, forced)
    for kind in CPU_FLAGS:
        cpuinfo = tmp_path / kind
        cpuinfo.write_text(f"flags\t\t: {CPU_FLAGS[kind]}\n")
        assert engine.resolve_precision("auto", torch.device("cpu"), str(cpuinfo)) == forced
        assert engine.resolve_precision("fp32", torch.device("cpu"), str(cpuinfo)) == "fp32"
    monkeypatch.setenv(engine.AUTO_PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="use bf16 or fp32"):
        engine.resolve_precision("auto", torch.device("cpu"))


def test_a_second_deepspeed_run_in_one_process_after_shutdown():
    """A run's end destroys the process group; DeepSpeed's clone of the world group must go
    with it, or the next DeepSpeed run in the process (a study's runs) fails to broadcast."""
    from pretrain.runtime.distributed import shutdown
    for _ in range(2):
        model = torch.nn.Linear(4, 2)
        build_engine(model, param_groups(model, 0.0), OptimConfig(lr=1e-3),
                     RuntimeConfig(engine="deepspeed", zero_stage=0, precision="fp32"),
                     init_distributed("cpu"), 2)
        shutdown()
