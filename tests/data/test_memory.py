"""A batch that cannot fit is refused before the run, and running out of memory anyway is one
line, not a traceback."""
import subprocess
import sys

import pytest

from data.memory import batch_bytes, check_batch_memory, memory_available
from data.stream import StreamConfig


def test_one_batch_larger_than_the_memory_available_is_refused_naming_both():
    cfg = StreamConfig(batch_size=1_000_000_000, num_frames=16, size=224)
    with pytest.raises(ValueError, match=r"data.batch_size=1000000000 needs at least .* GiB for "
                                         r"one batch \(3 x 16 x 224 x 224 clips.*more than the "
                                         r"2\.0 GiB of memory available \(MemAvailable\); use a "
                                         r"smaller data.batch_size \(about 148 at most here\)"):
        check_batch_memory(cfg, 3, (2 * 2**30, "MemAvailable"))
    check_batch_memory(StreamConfig(batch_size=8, num_frames=16, size=224), 3,
                       (2 * 2**30, "MemAvailable"))
    assert batch_bytes(148, 3, 16, 224) <= 2 * 2**30 < batch_bytes(149, 3, 16, 224)


def test_the_memory_available_names_its_limit():
    free, where = memory_available()
    assert free > 0 and where


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't "
                 "allocate memory: you tried to allocate 9663676416 bytes. Error code 12 "
                 "(Cannot allocate memory)")])
def test_running_out_of_memory_is_one_line(capsys, error):
    from pretrain.runtime.cli import run_command

    def body():
        raise error
    assert run_command("pretrain", body) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pretrain: error: out of memory (")
    assert "smaller data.batch_size" in err[0]
