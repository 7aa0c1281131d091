"""The machine a run uses: the device to train or infer on, a description written into results and reports, the CPU
that other work takes from a server's model, the intra-op threads a small inference batch runs on, and glibc's heap
settings for a long-running server and for training."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bertkit.errors import BertkitError


def pick_device(name: str | None = None) -> torch.device:
    """`cuda` when asked for (or available when `name` is None), else `cpu`."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertkitError(f"--device {name} was asked for but no CUDA device is available")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BertkitError(f"--device {name}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        raise BertkitError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


# The instruction sets that decide the CPU's matmul speed and whether bf16 is native (Linux's names).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of SPEED_FLAGS the CPU has (from /proc/cpuinfo; [] where it cannot be read)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            flags = next((set(ln.split(":", 1)[1].split()) for ln in f if ln.startswith("flags")), set())
        return [flag for flag in SPEED_FLAGS if flag in flags]
    return []


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPUs without them emulate bf16 matmuls: slower than fp32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX)."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def describe() -> dict:
    """CPU model, cores and instruction sets, memory, Python, platform, torch and its threads, and the GPU if there
    is one."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    info: dict = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    info["cpu_flags"] = cpu_flags()
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the kernels torch dispatches to
    info["platform"] = platform.platform()
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(ValueError, OSError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def summary() -> str:
    """One line for a report: '2 CPU cores (AMD EPYC), 23.5 GiB, no GPU, torch 2.13.0+cpu'."""
    m = describe()
    memory = f", {m['memory_gib']} GiB" if "memory_gib" in m else ""
    return f"{m['cores']} CPU cores ({m['cpu']}){memory}, {m.get('gpu', 'no GPU')}, torch {m['torch']}"


# glibc's malloc (Linux): a long-running server's and a training run's heap settings. Elsewhere (musl, macOS,
# Windows) these do nothing. mallopt's parameter numbers, from glibc's malloc.h:
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4  # 0: no block is mapped on its own, every one comes from a heap
_M_ARENA_MAX = -8


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both exist: it is glibc)
        return libc
    return None


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Let glibc's malloc create at most `arenas` heaps from now on (True where it could be set). By default a
    thread that finds the heaps busy gets a new one, up to 8 per core, and each keeps freed memory of its own; call
    it before the threads start."""
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_ARENA_MAX, arenas))


def keep_freed_memory(kept_bytes: int | None = 1 << 30) -> bool:
    """Let glibc's malloc keep up to `kept_bytes` of freed memory for reuse (None: all of it, at most 2 GB
    otherwise) rather than hand it back to the system at once; True where it could be set.

    A training step allocates and frees the same large tensors every step (activations, the masked-LM logits and
    their gradient, vocabulary-sized weight gradients). By default glibc maps each block over its threshold (at
    most 32 MB) afresh from the system and unmaps it when freed, so every step pays a page fault, and the kernel's
    zeroing, for each 4 KB page of them: tens of thousands per step of a small model (`benchmarks/throughput.py`
    records them). Here every block comes from the heap, and freed memory at the heap's top is kept: the next
    step's tensors reuse the last step's pages, and the process's memory stays near its peak between steps instead
    of falling and rising within each."""
    libc = _glibc()
    # mallopt takes a C int; -1 is glibc's "never trim".
    kept = -1 if kept_bytes is None else min(kept_bytes, 2**31 - 1)
    return bool(libc and libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, kept))


KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def limit_kernel_cache(kernels: int = 256) -> str:
    """Let oneDNN keep at most `kernels` compiled kernels ("primitives"), unless ONEDNN_PRIMITIVE_CACHE_CAPACITY
    already says how many; returns the capacity in force. Call it before the first bf16 matrix product.

    PyTorch's bf16 products on the CPU run through oneDNN, which compiles a kernel for each matrix shape and keeps
    up to 1,024 of them, each holding memory. A server's batches come in many shapes; bertkit's model rounds their
    token counts to a few sizes (`bertkit.model.recurring_rows`), so that each size's kernels are compiled once and then
    found in the cache: 256 holds those of several dozen sizes (an encoder has four weight shapes)."""
    return os.environ.setdefault(KERNEL_CACHE_ENV, str(kernels))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; True when some were released)."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))


# Linux's CPU accounting: /proc/stat (each CPU) and /proc/self/task/*/stat (each thread of this process), both in
# clock ticks. Elsewhere `CpuElsewhere.cores()` is None (nothing is measured, nothing adapts).
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _usable_cpus() -> set[int] | None:
    """The CPUs this process may run on (None where the platform does not say)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def _machine_busy_ticks(stat: str = "/proc/stat", usable: set[int] | None = None) -> int | None:
    """Ticks the CPUs this process may run on spent on anything but idling since boot (user, nice, system, irq,
    softirq and steal: a hypervisor that runs another guest takes the core as surely as another process does).
    Those CPUs only: in a container pinned to a few cores of a large machine, the other cores' work is not ours to
    wait for. `usable` (default: `_usable_cpus()`) and `stat` are for tests."""
    usable = usable if usable is not None else _usable_cpus()
    try:
        with open(stat) as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu") and ln[3:4].isdigit()]
    except OSError:
        return None
    busy = 0
    for fields in lines:
        if len(fields) < 9 or (usable is not None and int(fields[0][3:]) not in usable):
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        busy += user + nice + system + irq + softirq + steal
    return busy if lines else None


def _thread_ticks(tid: int) -> int:
    """User + system ticks of this process's thread `tid` (0 once it has ended)."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of the line


def _model_thread_ids() -> set[int] | None:
    """The ids of this process's threads that run the model: the calling thread, and every thread Python did not
    start (an intra-op pool); None where /proc cannot be read."""
    python = {t.native_id for t in threading.enumerate() if t.native_id is not None}
    python.discard(threading.get_native_id())
    try:
        return {int(name) for name in os.listdir("/proc/self/task")} - python
    except OSError:
        return None


class CpuElsewhere:
    """How many cores' worth of CPU time went, lately, to anything but the model: other processes, and this
    process's own Python threads other than the model's (the HTTP side reading and tokenizing requests).

    The model's threads are the thread that calls `cores()` (the one that runs the model) and the threads Python
    did not start (the intra-op pool of OpenMP or onnxruntime). Each call measures the time since the previous
    measurement once at least `window_s` has passed, and returns the latest measurement (None until there is one,
    and where /proc cannot be read)."""

    def __init__(self, window_s: float = 0.2):
        self.window_s = window_s
        self._last: tuple[float, int, dict[int, int]] | None = None
        self._cores: float | None = None

    def cores(self) -> float | None:
        """Cores' worth of CPU time that other work used over the last measured window (call it from the thread
        that runs the model)."""
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < self.window_s:
            return self._cores
        busy, tids = _machine_busy_ticks(), _model_thread_ids()
        if busy is None or tids is None:
            return None
        model = {tid: _thread_ticks(tid) for tid in tids}
        if self._last is not None:
            then, busy_then, model_then = self._last
            # A thread that ended in between counts from zero; one that started counts all its ticks.
            model_ticks = sum(ticks - model_then.get(tid, 0) for tid, ticks in model.items())
            self._cores = max(0.0, (busy - busy_then - model_ticks) / _TICK / (now - then))
        self._last = (now, busy, model)
        return self._cores


def threads_beside(most: int, elsewhere: float, current: int, cpus: int | None = None) -> int:
    """How many intra-op threads a model should run on (at most `most`, at least 1) while other work uses
    `elsewhere` of the `cpus` cores (default: those this process may run on), running `current` now.

    A parallel operator waits for its slowest thread, and a thread that shares its core with other work waits for
    a scheduler time slice, at every one of a forward's operators. So the model takes the cores the other work
    leaves, rounded to the nearest; it takes one more
    only once the other work has fallen 0.2 of a core below the point where it gave that one up, so that a load on
    the edge does not switch the count at every batch."""
    if cpus is None:
        usable = _usable_cpus()
        cpus = len(usable) if usable is not None else (os.cpu_count() or 1)
    spare = cpus - elsewhere
    wanted = int(spare + 0.5)
    if wanted > current:
        wanted = max(current, int(spare + 0.3))
    return max(1, min(most, wanted))


# ---------------------------------------------------------------------------------- threads of small batches

_threads_lock = threading.Lock()
_serial_depth = 0  # forwards now inside one_intra_op_thread, across Python threads
_threads_before = 1  # the intra-op thread count to restore when the last of them leaves


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the block with one intra-op thread and restore the previous count after it.

    The count is process-wide: while any block is inside (several Python threads may be), every forward of the
    process runs on one thread; the count set before the first entered is restored when the last one leaves."""
    global _serial_depth, _threads_before
    with _threads_lock:
        if _serial_depth == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(1)
        _serial_depth += 1
    try:
        yield
    finally:
        with _threads_lock:
            _serial_depth -= 1
            if _serial_depth == 0:
                torch.set_num_threads(_threads_before)


class ThreadChoice:
    """Whether a small inference batch runs on all intra-op threads or on one: whichever was faster lately.

    Each forward's wall time per token is kept for its mode and size class (the token count's power of two). The
    mode with the lower median of its last `window` times runs; a mode with fewer times is tried first, and the
    other mode is tried once every `retry_s` seconds per size class, so that a change in the machine's load is
    noticed either way. A median, not a mean: one slow forward (a process's first, or one that met a burst of other
    work) must not decide. `fixed` (True: always one thread, False: always all) switches the measuring off."""

    def __init__(self, retry_s: float = 5.0, window: int = 3):
        self.retry_s, self.window = retry_s, window
        self.fixed: bool | None = None
        self._times: dict[tuple[int, bool], deque[float]] = {}  # (size class, serial) -> seconds per token
        self._tried: dict[int, float] = {}  # size class -> when the mode that is not the best was last tried

    def serial(self, tokens: int, now: float) -> bool:
        """Whether a forward of `tokens` tokens starting at `now` (time.monotonic()) runs on one thread."""
        if self.fixed is not None:
            return self.fixed
        size = tokens.bit_length()
        times = {mode: self._times.get((size, mode), ()) for mode in (False, True)}
        for mode in (False, True):
            if len(times[mode]) < self.window:
                return mode
        best = statistics.median(times[True]) < statistics.median(times[False])
        if now - self._tried.setdefault(size, now) >= self.retry_s:  # the first choice counts as a try
            self._tried[size] = now
            return not best
        return best

    def record(self, tokens: int, serial: bool, wall_s: float) -> None:
        """A forward of `tokens` tokens took `wall_s` seconds on one thread (`serial`) or on all of them."""
        key = (tokens.bit_length(), serial)
        self._times.setdefault(key, deque(maxlen=self.window)).append(wall_s / max(tokens, 1))
