"""The CUDA paths (``pytest -m gpu``). Each test takes a ``device``: the CUDA case skips with its
reason where there is no GPU, and the CPU case runs the same code in the normal suite, so the
logic is checked on every CI run and the GPU case only adds the device."""
import pytest
import torch

from tests.pretrain.conftest import tiny_recipe  # noqa: F401  (the pre-training tests' recipe)


def cuda_missing() -> str | None:
    """Why CUDA cannot run here, or None."""
    if not torch.cuda.is_available():
        return (f"CUDA is absent: torch {torch.__version__} sees no GPU "
                f"(torch.cuda.is_available() is False)")
    return None


def gpus_missing(n: int) -> str | None:
    why = cuda_missing()
    if why is None and torch.cuda.device_count() < n:
        why = f"needs {n} GPUs, {torch.cuda.device_count()} here"
    return why


needs_cuda = pytest.mark.skipif(cuda_missing() is not None, reason=cuda_missing() or "")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=needs_cuda)]
