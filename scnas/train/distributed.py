"""torch.distributed set-up from the environment that submitit (or torchrun) exports.

One process per GPU with NCCL, or per CPU task with gloo; a single process needs no process group,
so the same training code runs in-process, under the local executor and on SLURM.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from scnas.errors import ScnasError

_LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass
class DistContext:
    """This process's place in the job, and collectives that degrade to no-ops for one process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    owns_group: bool = field(default=True, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.backend is not None:
            dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over all ranks (a new tensor on `tensor`'s device)."""
        if not tensor.is_floating_point():
            tensor = tensor.double()
        if self.backend is None:
            return tensor.detach().clone()
        reduced = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return (reduced / self.world_size).to(tensor.device)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable object)."""
        if self.backend is None:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, ordered by rank."""
        if self.backend is None:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        """Destroy the process group it created; a later init_distributed() starts afresh."""
        global _CONTEXT
        if self.owns_group and self.backend is not None and dist.is_initialized():
            dist.destroy_process_group()
        if _CONTEXT is self:
            _CONTEXT = None


_CONTEXT: DistContext | None = None


def init_distributed(prefer_cuda: bool = True) -> DistContext:
    """Join the job's process group described by RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.

    World size 1 (or no such variables) creates no process group. With CUDA: device
    cuda:LOCAL_RANK and NCCL; otherwise the CPU and gloo. Calling it again returns the same context.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if dist.is_initialized():  # set up by the caller (e.g. under torchrun): join it as it is
        _CONTEXT = DistContext(
            dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_backend(), owns_group=False
        )
        return _CONTEXT
    backend = None
    if world_size > 1:
        backend = "nccl" if use_cuda else "gloo"
        if backend == "gloo":
            _use_loopback_if_unresolvable(world_size)
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            device_id=device if use_cuda else None,
        )
    _CONTEXT = DistContext(rank, world_size, local_rank, device, backend)
    return _CONTEXT


def _use_loopback_if_unresolvable(world_size: int) -> None:
    """gloo binds to the address of this machine's host name; on one node, loopback will do."""
    if _resolves(socket.gethostname()):
        return
    single_node = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) == world_size or (
        os.environ.get("MASTER_ADDR", "localhost") in _LOOPBACK
    )
    if not single_node:
        raise ScnasError(
            f"host name {socket.gethostname()!r} does not resolve, and gloo needs it on a multi-node job: "
            "fix the host's DNS or /etc/hosts, or set GLOO_SOCKET_IFNAME to the interface that links the nodes"
        )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if not _resolves(os.environ.get("MASTER_ADDR", "localhost")):
        os.environ["MASTER_ADDR"] = "127.0.0.1"


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True
