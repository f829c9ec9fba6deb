"""Process settings for training on the XLA:CPU backend, applied once before JAX starts a backend.

`configure_cpu_training()` is called before JAX is imported by the stage runner (for every `jax`
stage, xgen_core/stages.py) and by the train-step benchmark, and again (a no-op by then) at the start
of `pretrain()` for direct callers. It does
nothing unless the process will run JAX on the CPU only (JAX_PLATFORMS / jax_platforms says cpu, or no
accelerator plugin is installed), so GPU/TPU hosts keep glibc's defaults.

Why: XLA:CPU allocates the whole step's scratch space (several GB for a 100M model) and its outputs
afresh at every execution, from a worker thread. glibc serves an allocation that large with mmap and
gives it back with munmap when freed, so every step page-faults and zero-fills all of it again:
measured on the 2-core bench machine, 1.3-1.5 M page faults and 3-6 s of kernel time per ~100M-model
step. With one malloc arena, mmap disabled and no trimming, freed memory stays in the process heap and
the next step reuses it: 0 page faults and ~0.03 s of kernel time per step. The price is that the
process keeps its peak heap (the step's working set) until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import os
import sys

log = logging.getLogger(__name__)

ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "jax_plugins")

# glibc mallopt() parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_configured = False


def cpu_only() -> bool:
    """True when JAX will run on the CPU backend alone (decided without importing JAX or starting a backend)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if not platforms and "jax" in sys.modules:
        platforms = sys.modules["jax"].config.jax_platforms or ""
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def keep_freed_memory() -> bool:
    """One malloc arena, no mmap'd chunks, no trimming (glibc only); True if applied."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: no mallopt semantics to rely on
        return False
    # M_ARENA_MAX must come before JAX's threads first call malloc (they would get arenas of their own,
    # and an arena other than the main one falls back to mmap for a block this large).
    # A trim threshold of -1 disables trimming (mallopt(3)).
    applied = [libc.mallopt(M_ARENA_MAX, 1), libc.mallopt(M_MMAP_MAX, 0), libc.mallopt(M_TRIM_THRESHOLD, -1)]
    return all(result == 1 for result in applied)


def configure_cpu_training() -> bool:
    """Apply the CPU-backend process settings if JAX will run on the CPU only; True if applied.

    Call before `import jax`: importing JAX starts a thread, and once a thread has a malloc arena of its
    own, XLA's worker threads may be handed that arena (and its mmap fallback) despite M_ARENA_MAX.
    Called later it still applies, but steps may keep page-faulting part of their scratch memory.
    Idempotent.
    """
    global _configured
    if _configured:
        return True
    if not cpu_only():
        return False
    _configured = keep_freed_memory()
    if not _configured:
        log.warning("could not set the malloc options for XLA:CPU training; steps will page-fault their "
                    "scratch memory afresh")
    return _configured
