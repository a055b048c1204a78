"""Where and how inference runs: the device (GPU when present, else CPU) and the number of
CPU threads.

Thread policy. torch's intra-op threads spin-wait for each other, so one thread sharing a
core with another busy process stalls all of them: on 2 busy cores, 2 threads made
detection 8x slower than 1. ``threads="auto"`` (the default) therefore uses

- 1 thread for small work (under :data:`SMALL_PIXELS` pixels in a call: cutouts, batches
  of them, images in parallel workers), where threads gain little;
- otherwise one thread per *idle* core: the cores available to this process minus the
  other tasks running right now (the run-queue length of ``/proc/loadavg``, its smallest
  of a few readings; 1 thread where that cannot be read).

An integer sets the count; parallel workers should use 1 each.

Inference thread. glibc's ``malloc`` gives each thread an arena of its own, and a
long-lived process (a notebook, a pipeline that holds tables, a benchmark) fragments the
main thread's arena with thousands of arrays of many sizes; each of the hundreds of tensors
a network pass allocates then searches that arena's free lists. Measured on this project's
2-core machine: with 10,000 live arrays of 8 kB to 1.6 MB in the process, one pass of the
photo-z network over 256 stamps took 0.51-0.83 s from the main thread and 0.20-0.28 s from
another thread (0.23-0.29 s from either in a fresh process); with 2,000 such arrays held
(1.6 GB), deblending a 1000x1000 field took 2.2-2.7 s against 1.8-2.0 s. Calls from the
main thread to the decorated entry points (:func:`inference_entry`: the photo-z networks,
deblending) therefore run in one persistent daemon thread of probcat's and the caller waits
for them; calls from any other thread run where they are (such threads have their own
arenas, and several of them keep running in parallel). Ctrl-C stops the job at its next
:func:`check_interrupt`. :func:`use_inference_thread` turns this off. Detection is not
routed there: with two torch threads, a fresh process detected a 1000x1000 LSST-i scene in
0.27 s from its main thread and 0.35 s from another (the team of OpenMP threads a non-main
thread drives was slower, for reasons not pinned down), and fresh processes are how
``probcat detect`` runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time

__all__ = [
    "choose_device",
    "device_name",
    "place",
    "auto_threads",
    "threads_for",
    "max_threads",
    "thread_limit",
    "trim_heap",
    "inference_entry",
    "check_interrupt",
    "use_inference_thread",
    "full_float32",
    "use_tf32",
    "SMALL_PIXELS",
    "physical_memory",
    "cgroup_memory_limit",
    "memory_limit",
    "check_memory",
]

SMALL_PIXELS = 512 * 512


def choose_device(device=None):
    """``device`` as a ``torch.device``; None: CUDA when available, else CPU."""
    import torch

    from probcat.errors import ProbcatValueError

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ProbcatValueError(f"device {device!r} is not a torch device ({e})") from None
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ProbcatValueError(f"device {device!r}: no CUDA GPU is available to torch here")
    return out


def device_name(device) -> str:
    """``device`` in words: ``"cpu"``, or e.g. ``"cuda (NVIDIA H200)"``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _others_running(readings: int = 5, pause_s: float = 0.002) -> int | None:
    """Other runnable tasks on the machine now (fewest over a few readings of the run
    queue, so a momentary blip is not counted), or None where it cannot be read."""
    fewest = None
    try:
        for i in range(readings):
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            fewest = running if fewest is None else min(fewest, running)
            if i + 1 < readings:
                time.sleep(pause_s)
    except (OSError, ValueError, IndexError):
        return None
    return max(fewest - 1, 0)  # this process's own running thread is one of them


def place(net, device=None, threads="auto"):
    """``(net, device)`` for an inference wrapper: ``threads`` checked, the device chosen
    (:func:`choose_device`) and ``net`` copied onto it when it lives elsewhere (the
    registry's cached copy stays where it is)."""
    import copy

    threads_for(threads, 0)  # validates the setting
    device = choose_device(device)
    if next(net.parameters()).device != device:
        net = copy.deepcopy(net).to(device)
    return net, device


def auto_threads() -> int:
    """One thread per idle core (at least 1)."""
    others = _others_running()
    if others is None:
        return 1
    return max(1, _cores() - others)


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def cgroup_memory_limit(proc_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's control group, the tightest set anywhere on its
    path (a container's, a batch job's: Docker, Kubernetes, SLURM), in bytes; None where
    there is none or it cannot be read. Reads cgroup v2 (``memory.max``) and v1
    (``memory/.../memory.limit_in_bytes``); v1's "no limit" is a huge number, and
    :func:`memory_limit` keeps the smaller of this and the machine's memory."""
    from pathlib import Path

    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "":
            top, name = Path(root), "memory.max"
        elif "memory" in parts[1].split(","):
            top, name = Path(root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        here = top / parts[2].lstrip("/")
        while True:  # the group and its parents (a path the mount does not show: skipped)
            try:
                limits.append(int((here / name).read_text().strip()))
            except (OSError, ValueError):  # none there, or "max"
                pass
            if here == top or top not in here.parents:
                break
            here = here.parent
    return min(limits) if limits else None


def memory_limit() -> tuple[int, str] | None:
    """``(bytes, what sets them)``: the memory this process may use, the machine's physical
    memory or its control group's tighter limit (:func:`cgroup_memory_limit`); None where
    neither can be read."""
    machine, group = physical_memory(), cgroup_memory_limit()
    if group is not None and (machine is None or group < machine):
        return group, "its control group (a container or batch job) allows"
    return None if machine is None else (machine, "this machine has")


def check_memory(need: float, what: str, hint: str) -> None:
    """Raise a one-line :class:`~probcat.errors.ProbcatValueError` when ``what`` needs more
    memory (``need`` bytes, an estimate) than this process may use (:func:`memory_limit`),
    before any of it is allocated: such work would otherwise run for hours or be killed by
    the system."""
    limit = memory_limit()
    if limit is not None and need > limit[0]:
        from probcat.errors import ProbcatValueError

        raise ProbcatValueError(
            f"{what} needs about {_gb(need)} of memory and {limit[1]} {_gb(limit[0])}; {hint}"
        )


def _gb(n: float) -> str:
    """Bytes in GB: two significant digits below 10 GB (a container's 0.45 GB is not
    "0 GB"), whole GB above."""
    return f"{n / 1e9:.2g} GB" if n < 1e10 else f"{n / 1e9:,.0f} GB"


def max_threads() -> int:
    """The most threads a setting may ask for: 4 per core of this machine, at least 8.
    More only oversubscribes the cores, and far more (e.g. 100,000) crashes the OpenMP
    runtime outright instead of failing cleanly."""
    return max(8, 4 * _cores())


def threads_for(threads, pixels: int) -> int:
    """The thread count for work on ``pixels`` pixels under the setting ``threads``
    (``"auto"``/None or an integer from 1 to :func:`max_threads`)."""
    if threads in (None, "auto"):
        return 1 if pixels < SMALL_PIXELS else auto_threads()
    top = max_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= top:
        from probcat.errors import ProbcatValueError

        raise ProbcatValueError(
            f"threads must be 'auto' or an integer from 1 to {top} (4 per core here, at least 8), "
            f"got {threads!r}"
        )
    return threads


@contextlib.contextmanager
def thread_limit(n: int):
    """Run the block with ``n`` torch intra-op threads and one BLAS thread for numpy, then
    restore the previous counts. numpy's products in the block are small (the
    nearest-neighbour ood_score, calibration maps); a BLAS pool of its own, woken for each,
    fights torch's threads for the cores: 98x98 cutouts ran 42 per second with it and
    55-62 with one BLAS thread, same images and hour, on this project's 2-core machine."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


_F32_LOCK = threading.Lock()
_F32_DEPTH = 0  # blocks inside full_float32 right now, in every thread
_F32_SAVED = None  # the settings found by the first of them, restored by the last
_TF32 = False


def use_tf32(enabled: bool = True) -> bool:
    """Whether probcat's inference on a GPU may use TF32 (off by default; see
    :func:`full_float32`); returns the previous setting."""
    global _TF32
    before, _TF32 = _TF32, bool(enabled)
    return before


@contextlib.contextmanager
def full_float32():
    """Run the block's GPU convolutions and matrix products in full float32, then restore
    torch's settings. cuDNN convolutions use TF32 by torch's default (products with a 10-bit
    mantissa), and a detection network reads a whole image through many of them: measured on
    an NVIDIA H200 (``benchmarks/gpu.py``), TF32 moved detection probabilities by up to 0.003
    on a 1000x1000 LSST-i scene and 0.17 on a 4000x4000 one (positions by up to 0.09 and 0.47
    px) against the CPU's, and full float32 by 1.5e-5 (0.0001 px) at about the same speed.
    A catalog should not depend on the machine it was made on. The settings are torch's,
    global to the process: the first block to enter sets them and the last to leave restores
    them. Nothing changes without a GPU or after ``use_tf32(True)``."""
    import torch

    global _F32_DEPTH, _F32_SAVED
    if _TF32 or not torch.cuda.is_available():
        yield
        return
    cudnn = torch.backends.cudnn
    with _F32_LOCK:
        if _F32_DEPTH == 0:
            _F32_SAVED = (cudnn.allow_tf32, torch.get_float32_matmul_precision())
            cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
        _F32_DEPTH += 1
    try:
        yield
    finally:
        with _F32_LOCK:
            _F32_DEPTH -= 1
            if _F32_DEPTH == 0:
                cudnn.allow_tf32 = _F32_SAVED[0]
                torch.set_float32_matmul_precision(_F32_SAVED[1])


@contextlib.contextmanager
def deterministic_gpu():
    """Run the block's GPU convolutions with cuDNN's deterministic algorithms (and without
    its per-shape benchmarking), then restore torch's settings: by default cuDNN may sum a
    convolution's gradients in a different order on each call, so two trainings of one
    config on one GPU drift apart from the first step. Nothing changes without a GPU."""
    import torch

    if not torch.cuda.is_available():
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


_MALLOC_TRIM = None  # resolved on first use: glibc's malloc_trim, or False where absent


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; nothing
    elsewhere). Loops that allocate and free many arrays of a few to a few tens of MB (the
    deblender's chunks of posterior samples) otherwise grow the resident memory with
    fragments: on a 1000x1000 field with 100 samples, a peak of 1.53 GB without, 1.16 GB
    with a trim after each chunk, at no measurable cost in time."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_POLL_S = 0.1  # how often a caller waiting for the inference thread wakes


def _wait(future) -> None:
    """Until ``future`` is done, in waits of :data:`_POLL_S` (see :meth:`_InferenceThread.call`)."""
    from concurrent.futures import wait

    while not future.done():
        wait([future], timeout=_POLL_S)


class _InferenceThread:
    """One daemon thread that runs the calls handed to it, one at a time, in order."""

    def __init__(self):
        import queue

        self.pid = os.getpid()
        self.jobs = queue.SimpleQueue()
        self.cancel = threading.Event()  # set: the waiting caller was interrupted
        self.caller = None  # the frame of the call waiting for the running job
        self.thread = threading.Thread(target=self._loop, name="probcat-inference", daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            job = self.jobs.get()
            self._run(*job)
            del job  # nothing of a finished job stays referenced here

    def _run(self, future, context, fn, args, kwargs, caller):
        self.cancel.clear()
        if not future.set_running_or_notify_cancel():
            return
        self.caller = caller  # where probcat's warnings of this job point (errors.warn_user)
        try:
            future.set_result(context.run(fn, *args, **kwargs))
        except BaseException as e:  # handed to the caller, which raises it
            future.set_exception(e)
        finally:
            self.caller = None

    def call(self, fn, args, kwargs):
        import contextvars
        import sys
        from concurrent.futures import Future

        future = Future()  # the caller's context goes along (numpy's errstate, ...)
        self.jobs.put((future, contextvars.copy_context(), fn, args, kwargs, sys._getframe()))
        try:
            # waits of _POLL_S: the kernel may hand a Ctrl-C to any thread of the process
            # (torch's, this one), and then only a main thread that wakes now and then runs
            # Python's handler; one blocked in a plain wait would sit out the whole job
            _wait(future)
            return future.result()
        except KeyboardInterrupt:
            # Ctrl-C: the job stops at its next check_interrupt (a fraction of a second),
            # so that nothing runs on behind the caller's back, nor inside torch when the
            # interpreter exits (which aborts the process); a second Ctrl-C stops waiting
            self.cancel.set()
            _wait(future)
            raise


_THREAD: _InferenceThread | None = None
_THREAD_LOCK = threading.Lock()
_USE_THREAD = True


def use_inference_thread(enabled: bool = True) -> bool:
    """Whether calls from the main thread run in probcat's inference thread (the module
    docs say why; on by default); returns the previous setting."""
    global _USE_THREAD
    before, _USE_THREAD = _USE_THREAD, bool(enabled)
    return before


def _inference_thread() -> _InferenceThread:
    global _THREAD
    with _THREAD_LOCK:
        if _THREAD is None or _THREAD.pid != os.getpid() or not _THREAD.thread.is_alive():
            _THREAD = _InferenceThread()  # first use, or a forked child: a thread of its own
        return _THREAD


def job_caller():
    """In probcat's inference thread during a job, the frame of the call waiting for it (it
    waits there until the job ends: :func:`probcat.errors.warn_user` points there); None
    elsewhere."""
    t = _THREAD
    if t is None or threading.current_thread() is not t.thread:
        return None
    return t.caller


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` in probcat's inference thread when the caller waiting for
    the job was interrupted: called between the chunks of long loops (photo-z stamps,
    deblending batches and samples); nothing anywhere else."""
    t = _THREAD
    if t is not None and t.cancel.is_set() and threading.current_thread() is t.thread:
        raise KeyboardInterrupt


def inference_entry(fn):
    """Decorator: ``fn`` called from the main thread runs in probcat's inference thread (see
    the module docs); from any other thread, or with :func:`use_inference_thread` off,
    where it is called. Results and exceptions reach the caller unchanged."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _USE_THREAD or threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        return _inference_thread().call(fn, args, kwargs)

    return wrapper
