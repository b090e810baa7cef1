"""keep_freed_memory: a freed large tensor's pages are reused by the next one instead of mapped and zeroed anew."""
from __future__ import annotations

import subprocess
import sys

import pytest

from offline_sweeps.algorithms.host_memory import GLIBC

PAGE_FAULTS = """
import resource, torch
from offline_sweeps.algorithms.host_memory import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.empty(16 * 2 ** 20).fill_(1.0)     # 64 MiB, allocated, touched and freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
default = faults()
assert keep_freed_memory()
faults()
print(default, faults())
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_tensor_memory_is_reused_without_page_faults():
    # A fresh process: the test session itself already runs with the setting (conftest).
    result = subprocess.run([sys.executable, "-c", PAGE_FAULTS], capture_output=True, text=True, check=True)
    default, kept = map(int, result.stdout.split())
    pages = 4 * 64 * 2 ** 20 // 4096
    assert default >= 0.9 * pages       # glibc's default: every 64 MiB block is mapped and faulted in again
    assert kept < 0.01 * pages
