"""``keep_freed_host_memory``: freed activation-sized buffers are re-used instead of
page-faulting fresh memory every time (checked in fresh processes: the setting is global)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from cbdm_core.host_memory import keep_freed_host_memory
if sys.argv[1] == "keep":
    assert keep_freed_host_memory() and keep_freed_host_memory()  # idempotent
x = torch.ones(1)
def churn():
    for _ in range(20):
        a = torch.empty(16 << 20, dtype=torch.float32)  # 64 MB, above glibc's largest mmap threshold
        a.fill_(1.0)  # touch every page
        del a
churn()  # warm-up: the first allocation faults in either mode
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_kept_memory_avoids_page_faults():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 20 * 10_000  # 20 fresh 64 MB mappings: ~16k page faults each
    assert kept < default / 20
