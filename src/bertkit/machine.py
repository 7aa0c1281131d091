"""The machine a run uses: the device to train or infer on, and a description written into results and reports."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform

import torch

from bertkit.errors import BertkitError


def pick_device(name: str | None = None) -> torch.device:
    """`cuda` when asked for (or available when `name` is None), else `cpu`."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BertkitError(f"--device {name} was asked for but no CUDA device is available")
    return torch.device(name)


# The instruction sets that decide the CPU's matmul speed and whether bf16 is native (Linux's names).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of SPEED_FLAGS the CPU has (from /proc/cpuinfo; [] where it cannot be read)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            flags = next((set(ln.split(":", 1)[1].split()) for ln in f if ln.startswith("flags")), set())
        return [flag for flag in SPEED_FLAGS if flag in flags]
    return []


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


# glibc's malloc (Linux): a long-running server's heap settings. Elsewhere (musl, macOS, Windows) these do nothing.
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


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


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; True when some were released)."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))
