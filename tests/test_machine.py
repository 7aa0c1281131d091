"""The machine helpers: glibc's heap handed back to the system, its heap count limited, and freed memory kept for the
next training step; the CPU other work uses, and the model threads that leave it its cores."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time

import pytest

from bertkit.machine import (
    KERNEL_CACHE_ENV,
    CpuElsewhere,
    _machine_busy_ticks,
    _model_thread_ids,
    cpu_has_native_bf16,
    limit_malloc_arenas,
    release_free_memory,
    threads_beside,
)

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


# bf16 products of 1,000 different shapes, as a server's unpadded batches have: oneDNN compiles a kernel for each.
KERNELS = """
import sys, torch
from bertkit.machine import limit_kernel_cache, release_free_memory
if sys.argv[1] == "limited":
    limit_kernel_cache(16)
def rss_mib():
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS")) / 1024
w = torch.randn(1536, 384)
with torch.autocast("cpu", dtype=torch.bfloat16):
    torch.nn.functional.linear(torch.randn(8, 384), w)
    before = rss_mib()
    for n in range(9, 1009):
        torch.nn.functional.linear(torch.randn(n, 384), w)
release_free_memory()
print(rss_mib() - before)
"""


@pytest.mark.skipif(not GLIBC or not cpu_has_native_bf16(), reason="oneDNN's bf16 kernels, read on glibc")
def test_a_limited_kernel_cache_holds_less_memory() -> None:
    """oneDNN reads its cache capacity when it first compiles a kernel, so `limit_kernel_cache` works from inside
    the process. Seen: ~660 MB kept by the default cache of 1,024 kernels, ~270 MB with 16 (some memory per shape
    stays whatever the cache holds)."""
    grown = {}
    env = {k: v for k, v in os.environ.items() if k != KERNEL_CACHE_ENV}  # as a fresh process has it
    for cache in ("default", "limited"):
        out = subprocess.run([sys.executable, "-c", KERNELS, cache], capture_output=True, text=True, check=True,
                             env=env)  # fmt: skip
        grown[cache] = float(out.stdout)
    assert grown["limited"] < 0.75 * grown["default"], grown


# A training step's pattern: large tensors allocated and freed again every step. 40 MB is above the largest size
# glibc would ever serve from its heap by default, so each step maps it afresh: one page fault per 4 kB page.
STEPS = """
import resource, statistics, sys, torch
from bertkit.machine import keep_freed_memory
if sys.argv[1] != "default":
    assert keep_freed_memory({"keep": 1 << 30, "all": None, "over_an_int": 64 << 30}[sys.argv[1]])
def step():
    a, b = torch.ones(6 << 20), torch.ones(10 << 20)  # 24 MB, 40 MB
    return float(a.sum() + b.sum())
faults = []
for _ in range(15):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[5:]))  # the heap's layout settles within the first few steps
"""


@pytest.mark.skipif(not GLIBC, reason="the heap helpers act on glibc's malloc only (elsewhere they return False)")
def test_kept_freed_memory_spares_each_step_its_page_faults() -> None:
    def faults_per_step(mode: str) -> float:
        run = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
        return float(run.stdout)

    assert faults_per_step("default") > 5000  # 40 MB in 4 kB pages: ~10,000 faults per step
    assert faults_per_step("keep") < 100
    assert faults_per_step("all") < 100  # nothing is ever handed back
    assert faults_per_step("over_an_int") < 100  # more than mallopt's C int holds: kept as 2 GB, not wrapped to 0


LINUX_PROC = os.path.exists("/proc/stat") and os.path.isdir("/proc/self/task")
SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def measured_over(elsewhere: CpuElsewhere, seconds: float, work=lambda s: time.sleep(s)) -> float:
    """What `elsewhere` reports for a window of `seconds` during which the calling thread does `work`."""
    assert elsewhere.cores() is None  # the first call only starts the measurement
    work(seconds)
    cores = elsewhere.cores()
    assert cores is not None
    return cores


@pytest.mark.skipif(not LINUX_PROC, reason="CPU time is read from Linux's /proc")
def test_another_process_counts_as_elsewhere() -> None:
    # A busy process gets most of a core even beside the other test worker (2 cores, 3 busy threads at worst).
    hog = subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=5)])
    try:
        time.sleep(0.3)  # the interpreter has started and spins
        assert measured_over(CpuElsewhere(window_s=0.0), 0.6) > 0.6
    finally:
        hog.kill()
        hog.wait()


@pytest.mark.skipif(not LINUX_PROC, reason="CPU time is read from Linux's /proc")
def test_the_models_threads_are_the_caller_and_those_python_did_not_start() -> None:
    import torch

    torch.ones(1 << 20).sum()  # a parallel operator: the intra-op pool's threads exist now
    other = threading.Thread(target=time.sleep, args=(0.5,))
    other.start()
    try:
        model = _model_thread_ids()
        assert model is not None
        assert threading.get_native_id() in model and other.native_id not in model  # the HTTP side's threads
        all_threads = {int(name) for name in os.listdir("/proc/self/task")}
        python = {t.native_id for t in threading.enumerate()}
        assert model == (all_threads - python) | {threading.get_native_id()}
    finally:
        other.join()


@pytest.mark.skipif(not LINUX_PROC, reason="CPU time is read from Linux's /proc")
def test_the_calling_threads_own_work_is_not_elsewhere() -> None:
    """The thread that asks is the model's: its CPU time is taken out of the machine's busy time."""
    ticks = os.sysconf("SC_CLK_TCK")
    elsewhere = CpuElsewhere(window_s=0.0)
    busy_before, start, own_before = _machine_busy_ticks(), time.monotonic(), time.thread_time()
    cores = measured_over(elsewhere, 0.6, spin)
    wall = time.monotonic() - start
    machine = (_machine_busy_ticks() - busy_before) / ticks / wall
    # This thread spun the whole window, but beside the other test worker it may have had only part of a core: what
    # it had is what must be taken out (half of it at least, for the clock ticks' rounding).
    own = (time.thread_time() - own_before) / wall
    assert own > 0.2
    assert cores < machine - 0.5 * own


def test_threads_beside_leave_the_cores_other_work_uses() -> None:
    assert threads_beside(2, 0.0, 2, cpus=2) == 2
    assert threads_beside(2, 0.9, 2, cpus=2) == 1  # a core busy elsewhere: one thread
    assert threads_beside(2, 1.9, 1, cpus=2) == 1  # never fewer than one
    assert threads_beside(4, 0.0, 4, cpus=16) == 4  # never more than asked for
    assert threads_beside(16, 3.2, 16, cpus=16) == 13
    # Down once more than half a core is taken, up again only below 0.3 of a core: no switch at every batch on an
    # edge load.
    assert threads_beside(2, 0.45, 2, cpus=2) == 2
    assert threads_beside(2, 0.55, 2, cpus=2) == 1
    assert threads_beside(2, 0.45, 1, cpus=2) == 1
    assert threads_beside(2, 0.25, 1, cpus=2) == 2


def test_busy_ticks_count_only_the_cpus_this_process_may_run_on(tmp_path) -> None:
    """/proc/stat's first line sums every CPU of the machine; a process pinned to some of them (a container on a
    large machine) must not read the others' work as its own cores taken."""
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  1111 0 1111 9000 0 0 0 0 0 0\n"
        "cpu0 1000 0 1000 1000 50 0 0 0 0 0\n"  # user, nice, system, idle, iowait, irq, softirq, steal
        "cpu1 100 1 10 8000 40 2 3 4 0 0\n"
        "intr 12345\n"
    )
    assert _machine_busy_ticks(str(stat), usable={1}) == 100 + 1 + 10 + 2 + 3 + 4  # idle and iowait are not busy
    assert _machine_busy_ticks(str(stat), usable={0, 1}) == 2000 + 120


def test_a_named_gpu_is_the_one_used_and_one_that_is_not_there_is_refused(monkeypatch) -> None:
    """`--device cuda:1` on one process trains on the second GPU, not on the local rank's (cuda:0); an index past
    the machine's GPUs is one line naming those it has. CUDA is simulated: the suite runs on CPUs."""
    import torch

    from bertkit.errors import BertkitError
    from bertkit.machine import pick_device
    from bertkit.train import distributed

    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: None)  # process-wide: left as it is
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # set by setup_device: put back
    try:
        assert distributed.setup_device("cuda:1") == (torch.device("cuda", 1), 0, 1) and chosen == [1]
        assert distributed.setup_device("cuda")[0] == torch.device("cuda", 0) and chosen == [1, 0]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    with pytest.raises(BertkitError, match=r"cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        pick_device("cuda:2")
