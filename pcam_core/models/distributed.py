"""The process's place under `torchrun`: rank, world size, its device, and the few collectives used.

A plain process is rank 0 of a world of 1 and every method is a no-op, so callers need no branches.
Under torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK` set) the process group is created on first use:
NCCL on GPUs (one per local rank), gloo on CPU.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from pcam_core.models.registry import resolve_device


class Distributed:
    """Rank and world from torchrun's environment; a single process otherwise."""

    def __init__(self, device_spec: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(device_spec)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        # the one that starts the process group ends it: crossval holds one group across its folds (a group
        # destroyed and started again on torchrun's store can hang)
        self.owner = self.world > 1 and not dist.is_initialized()
        if self.owner:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def same(self, value):
        """Rank 0's value of a picklable object, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank's flag is set (so all ranks stop at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, value) -> list:
        """Every rank's picklable `value`, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's share of `indices`: every world-th one, starting at its rank."""
        return indices[self.rank::self.world]

    def unshard(self, parts: list[np.ndarray]) -> np.ndarray:
        """Reassembles the gathered results of `shard`-ed work into the original order."""
        out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
        for r, part in enumerate(parts):
            out[r::self.world] = part
        return out

    def close(self) -> None:
        if self.owner and dist.is_initialized():
            dist.destroy_process_group()
