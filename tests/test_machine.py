"""The machine helpers: glibc's heap handed back to the system, and its heap count limited."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from bertkit.machine import limit_malloc_arenas, release_free_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Freed blocks between live ones stay in the heap (below its top, so free() cannot shrink it); malloc_trim hands
# their pages back. 200 MB in 4 kB blocks (over pymalloc's 512 bytes: glibc's malloc serves them), every 50th kept.
FRAGMENTED = """
from bertkit.machine import release_free_memory
def rss_mib():
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS")) / 1024
blocks = [bytes(4000) for _ in range(50_000)]
kept = blocks[::50]
del blocks
before = rss_mib()
print(release_free_memory(), before - rss_mib())
"""


@pytest.mark.skipif(not GLIBC, reason="the heap helpers act on glibc's malloc only (elsewhere they return False)")
def test_freed_memory_between_live_blocks_goes_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True, check=True).stdout
    released, dropped_mib = out.split()
    assert released == "True" and float(dropped_mib) > 100  # most of the ~196 MB freed


@pytest.mark.skipif(not GLIBC, reason="the heap helpers act on glibc's malloc only (elsewhere they return False)")
def test_the_heap_count_can_be_limited() -> None:
    assert limit_malloc_arenas(8 * 64) is True  # glibc's own default on a 64-core machine: changes nothing here
    assert isinstance(release_free_memory(), bool)
