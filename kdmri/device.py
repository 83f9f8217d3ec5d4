"""Device choice and GPU slots.

``--device auto`` takes CUDA when present, else MPS, else the CPU. When several GPUs are
visible and no scheduler has narrowed them (``CUDA_VISIBLE_DEVICES`` unset), each training
process claims one free GPU with an exclusive OS file lock (``fcntl.flock``) on
``<lock dir>/gpu<N>.lock``; the kernel releases it when the process exits, also on a
crash. So ``snakemake --cores all --resources gpu=2`` on a two-GPU machine trains two jobs
on two different GPUs. Under a scheduler that sets ``CUDA_VISIBLE_DEVICES`` (SLURM) the
process uses what it is given.

With ``KDMRI_JOBS_PER_GPU=k`` (the workflow sets it from ``resources.jobs_per_gpu``) each
GPU takes k jobs at once: there are ``k x GPUs`` slots and slot i runs on GPU ``i // k``, so
``--resources gpu=N`` counts slots (N = k x GPUs). Small networks leave a GPU mostly idle
with one training, as the host queues kernels faster than one job's steps use them.

``KDMRI_FAKE_GPUS=N`` pretends N GPUs are visible (the slots are claimed and logged but the
work runs on the CPU): this is how the allocator is tested on machines without a GPU.
``KDMRI_LOCK_DIR`` overrides the lock folder (default: the system temp folder).

On the CPU, :func:`keep_freed_memory` (called by every ``kdmri`` command that runs a
network) stops the C library from handing freed tensor memory back to the OS between
operations.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdmri.errors import KdmriError

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process for reuse.

    PyTorch takes CPU tensors straight from malloc, and glibc serves large blocks with
    fresh pages from the OS and returns them on free, so every large activation faults in
    new pages (the page faults and the time they cost: docs/performance.md). Sets the mmap
    threshold to 32 MiB (glibc's largest) and the trim threshold to 1 GiB; the process
    then keeps up to that much freed memory instead of returning it. Returns False,
    changing nothing, where the C library has no ``mallopt`` (macOS, musl).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_set = mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
    trim_set = mallopt(_M_TRIM_THRESHOLD, 2**30)
    return bool(mmap_set and trim_set)


def visible_gpu_count() -> int:
    fake = os.environ.get("KDMRI_FAKE_GPUS")
    if fake is not None:
        try:
            return int(fake)
        except ValueError:
            raise KdmriError(f"KDMRI_FAKE_GPUS must be an integer, found {fake!r}") from None
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def jobs_per_gpu() -> int:
    """Concurrent jobs per GPU from ``KDMRI_JOBS_PER_GPU`` (1 when unset)."""
    value = os.environ.get("KDMRI_JOBS_PER_GPU", "1")
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        raise KdmriError(f"KDMRI_JOBS_PER_GPU must be an integer >= 1, found {value!r}")
    return k


def lock_dir() -> Path:
    return Path(os.environ.get("KDMRI_LOCK_DIR", Path(tempfile.gettempdir()) / "kdmri-gpu-locks"))


@dataclass
class GpuSlot:
    """A claimed GPU slot; the lock is held while this object's file stays open. Slot
    ``index`` runs on GPU ``gpu`` (``index // jobs per GPU``)."""

    index: int
    path: Path
    _handle: object | None = None
    log: object = print
    gpu: int = 0

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            # wall-clock stamps on claim and release let logs show which jobs overlapped
            self.log(f"gpu slot: released slot {self.index} at {time.time():.3f}")


def claim_gpu_slot(count: int, poll_s: float = 1.0, timeout_s: float | None = None,
                   log=print, per_gpu: int = 1) -> GpuSlot:
    """Claim the first free slot among ``count`` (``per_gpu`` consecutive slots share a
    GPU), waiting (and saying so) while all are taken."""
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    announced = False
    while True:
        for index in range(count):
            path = folder / f"gpu{index}.lock"
            handle = open(path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            gpu = index // per_gpu
            log(f"gpu slot: claimed slot {index} of {count} (GPU {gpu}; {path}) at {time.time():.3f}")
            return GpuSlot(index, path, handle, log, gpu)
        if not announced:
            log(f"gpu slot: all {count} slots busy, waiting for one to be released")
            announced = True
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise KdmriError(f"no free GPU slot among {count} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def select_device(name: str = "auto", log=print) -> tuple[torch.device, GpuSlot | None]:
    """Resolve ``auto|cpu|cuda|cuda:N|mps`` to a device, claiming a GPU slot where needed."""
    if name == "cpu":
        return torch.device("cpu"), None
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise KdmriError("device 'mps' requested but MPS is not available on this machine")
        return torch.device("mps"), None
    if name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise KdmriError(f"device {name!r} requested but CUDA is not available")
        return torch.device(name), None
    if name not in ("auto", "cuda"):
        raise KdmriError(f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps")
    count = visible_gpu_count()
    fake = "KDMRI_FAKE_GPUS" in os.environ
    if name == "cuda" and not torch.cuda.is_available() and not fake:
        raise KdmriError("device 'cuda' requested but CUDA is not available")
    if count == 0:
        if name == "auto" and torch.backends.mps.is_available():
            return torch.device("mps"), None
        return torch.device("cpu"), None
    if os.environ.get("CUDA_VISIBLE_DEVICES") and not fake:
        log(f"gpu slot: using the GPU the scheduler gave (CUDA_VISIBLE_DEVICES="
            f"{os.environ['CUDA_VISIBLE_DEVICES']})")
        return torch.device("cuda:0"), None
    per_gpu = jobs_per_gpu()
    slot = claim_gpu_slot(count * per_gpu, log=log, per_gpu=per_gpu)
    if fake:
        return torch.device("cpu"), slot
    return torch.device(f"cuda:{slot.gpu}"), slot
