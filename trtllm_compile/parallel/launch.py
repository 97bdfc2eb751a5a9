"""Start a tensor-parallel group and one `TensorParallelRunner` per rank.

Two ways in, one code path after:
- spawned: the calling process becomes rank 0 and starts ranks 1.. with torch.multiprocessing ("spawn"), on a
  free localhost port. Each worker gets the model through `ModelSource`: the module itself (its CPU tensors
  shared, not copied), a picklable factory, or a folder to load.
- external launcher (torchrun, or anything that sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT): every
  process built its model already; rank 0 returns a runner, ranks 1.. serve and then leave the process.

gloo on CPU; NCCL on GPUs (one per rank: LOCAL_RANK, else the rank), with NVLink multicast off
(NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1), plus a gloo group for the per-step control message.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.parallel.runner import TensorParallelRunner

logger = logging.getLogger(__name__)

ModelSource = torch.nn.Module | Callable[[], torch.nn.Module] | str | os.PathLike
_TIMEOUT = datetime.timedelta(minutes=30)  # a rank may spend minutes exporting a large model


@dataclass
class RankInfo:
    rank: int
    world_size: int
    device: torch.device
    control_group: dist.ProcessGroup | None
    owns_group: bool  # created here (spawned, or torchrun without a group yet): destroyed here too


def launched_externally() -> bool:
    return dist.is_initialized() or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def free_port() -> int:
    """A localhost TCP port nobody listens on now (for a rendezvous or a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_rank(world_size: int, device_type: str, rank: int | None = None, init_method: str = "env://") -> RankInfo:
    """Join (or create) the default process group as `rank` and pick this rank's device."""
    owns_group, control = _join(world_size, device_type, rank, init_method)
    rank = dist.get_rank()
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return RankInfo(rank, world_size, device, control, owns_group)


def _join(world_size: int, device_type: str, rank: int | None, init_method: str):
    """The rendezvous: the default group (NCCL or gloo) and, next to NCCL, a gloo group for the control message."""
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")  # the peer all-reduce reads peers' memory
    owns_group = not dist.is_initialized()
    if owns_group:
        rank = int(os.environ["RANK"]) if rank is None else rank
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=_TIMEOUT)
    if dist.get_world_size() != world_size:
        raise ValueError(
            f"tensor_parallel_size={world_size} but the process group has {dist.get_world_size()} ranks; "
            "launch as many processes as the tensor-parallel size"
        )
    control = dist.new_group(backend="gloo", timeout=_TIMEOUT) if device_type == "cuda" else None
    return owns_group, control


def _init_watching(processes: list, world_size: int, device_type: str, init_method: str) -> RankInfo:
    """Rank 0's rendezvous, run beside a watch on the spawned ranks: one that dies before joining (a model that
    cannot be unpickled or loaded) is reported at once instead of waited for until the timeout."""
    joined: list = []

    def join() -> None:
        try:
            joined.append(_join(world_size, device_type, 0, init_method))
        except BaseException as error:
            joined.append(error)

    thread = threading.Thread(target=join, name="tp-rendezvous", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.2)
        dead = [p for p in processes if p.exitcode is not None]
        if dead and thread.is_alive():
            raise RuntimeError(
                f"tensor-parallel {dead[0].name} exited with code {dead[0].exitcode} before joining the group; "
                "its traceback is above"
            )
    if isinstance(joined[0], BaseException):
        raise joined[0]
    owns_group, control = joined[0]
    device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    return RankInfo(0, world_size, device, control, owns_group)


def leave_group(runner: TensorParallelRunner, info: RankInfo) -> None:
    """After the last step: drop the captured CUDA graphs (they hold NCCL work), then the group, on every rank
    at once (NCCL tears its communicators down together)."""
    runner.release()
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def load_on_cpu(path: str | os.PathLike | None, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A model folder (None: the embedded default) loaded onto the host; a rank moves only its shard on."""
    from trtllm_compile.models import load_model

    return load_model(path, dtype=dtype, device="cpu")[0]


def _resolve(source: ModelSource) -> torch.nn.Module:
    if isinstance(source, torch.nn.Module):
        return source
    return source() if callable(source) else load_on_cpu(source)


class StartupWatch:
    """Spawned ranks report "built" (or their traceback) on a queue; rank 0 waits for those reports, watching
    the processes too, before each start-up collective: a rank that fails is reported at once, not waited for
    until the group's timeout (gloo does not notice a peer that died before the collective)."""

    def __init__(self, queue, processes: list | None = None):
        self.queue, self.processes, self._built = queue, processes or [], set()

    def built(self, rank: int) -> None:
        self.queue.put(("built", rank, ""))

    def failed(self, rank: int, text: str) -> None:
        self.queue.put(("failed", rank, text))

    def wait_built(self, ranks) -> None:
        while not set(ranks) <= self._built:
            if not self.queue.empty():
                status, rank, text = self.queue.get()
                if status == "failed":
                    raise RuntimeError(f"tensor-parallel rank {rank} failed while starting:\n{text}")
                self._built.add(rank)
                continue
            dead = [p for p in self.processes if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"tensor-parallel {dead[0].name} exited with code {dead[0].exitcode}")
            time.sleep(0.05)


def _make_runner(model, info: RankInfo, runner_kwargs: dict, startup=None) -> TensorParallelRunner:
    tp = TensorParallelConfig(info.rank, info.world_size, dist.group.WORLD.group_name)
    return TensorParallelRunner(
        model, tp=tp, device=info.device, control_group=info.control_group, startup=startup, **runner_kwargs
    )


def _worker_main(rank: int, world_size: int, device_type: str, init_method: str, source, runner_kwargs, queue):
    """A spawned rank: build its shard, serve rank 0's steps, leave when told."""
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s", stream=sys.stderr)
    startup = StartupWatch(queue)
    try:
        if device_type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # the ranks share the host's cores
        info = init_rank(world_size, device_type, rank, init_method)
        runner = _make_runner(lambda: _resolve(source).eval(), info, runner_kwargs, startup)  # a loaded model is freed
        runner.serve()
        leave_group(runner, info)
    except BaseException:
        startup.failed(rank, traceback.format_exc())
        raise


class TensorParallelGroup:
    """Rank 0's handle on the group: its runner, and the workers it spawned (if any), stopped by `close()`."""

    def __init__(self, runner: TensorParallelRunner, info: RankInfo, processes: list):
        self.runner = runner
        self._finalizer = weakref.finalize(self, _shutdown, runner, info, processes)

    def close(self) -> None:
        self._finalizer()


def _shutdown(runner: TensorParallelRunner, info: RankInfo, processes: list) -> None:
    try:
        if all(p.is_alive() for p in processes):
            runner.stop_workers()
            leave_group(runner, info)
    finally:
        for p in processes:
            p.join(timeout=60)
            if p.is_alive():
                logger.warning("tensor-parallel %s did not exit; terminating it", p.name)
                p.terminate()


def start_group(
    model: torch.nn.Module,
    world_size: int,
    runner_kwargs: dict,
    source: ModelSource | None = None,
    device_type: str | None = None,
) -> TensorParallelGroup:
    """Rank 0's runner of a `world_size` group, spawning ranks 1.. unless an external launcher started them.

    `source`: how spawned ranks get the model (default: `model` itself). `device_type`: "cuda" (one GPU per
    rank; the default when there is one) or "cpu". `runner_kwargs`: TensorParallelRunner's sizing arguments.
    Under an external launcher, ranks 1.. never return: they serve until rank 0 closes, then exit the process.
    """
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not launched_externally() and world_size > torch.cuda.device_count():
        raise ValueError(
            f"tensor_parallel_size={world_size} needs {world_size} GPUs on this host (one per rank), and it has "
            f"{torch.cuda.device_count()}; use a smaller tensor_parallel_size, launch the ranks on several hosts "
            "with torchrun, or run them on the CPU (device='cpu')"
        )
    if launched_externally():
        info = init_rank(world_size, device_type)
        runner = _make_runner(model, info, runner_kwargs)
        if info.rank != 0:
            runner.serve()
            leave_group(runner, info)
            raise SystemExit(0)
        return TensorParallelGroup(runner, info, [])
    init_method = f"tcp://127.0.0.1:{free_port()}"
    context = mp.get_context("spawn")
    queue, processes = context.SimpleQueue(), []
    for rank in range(1, world_size):
        worker_source = source if source is not None else model
        args = (rank, world_size, device_type, init_method, worker_source, runner_kwargs, queue)
        processes.append(context.Process(target=_worker_main, args=args, daemon=True, name=f"tp-rank-{rank}"))
        processes[-1].start()
    try:
        info = _init_watching(processes, world_size, device_type, init_method)
        runner = _make_runner(model, info, runner_kwargs, StartupWatch(queue, processes))
        return TensorParallelGroup(runner, info, processes)
    except BaseException:
        for p in processes:
            p.terminate()
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
