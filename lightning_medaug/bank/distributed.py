"""Which shards this process writes: ranks from ``torch.distributed`` or from ``torchrun``'s environment.

Every step of a bank write runs on all ranks through :meth:`RankContext.run_everywhere`, which
shares failures: when one rank raises (a bad argument, a full disk), every rank raises instead of
waiting forever for it at the next collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

__all__ = ["RankContext", "rank_context"]

#: Errors about what the user passed; other ranks re-raise them as the same type.
_USER_ERRORS = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}


@dataclass(frozen=True)
class RankContext:
    rank: int = 0
    world_size: int = 1

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (a plain list on one process)."""
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def run_everywhere(self, step: Callable[[], Any]) -> Any:
        """Run ``step`` on this rank; raise on every rank if it failed on any."""
        if self.world_size == 1:
            return step()
        try:
            result, failure = step(), None
        except Exception as err:  # shared below, then re-raised unchanged on this rank
            result, failure, own = None, (type(err).__name__, str(err)), err
        failures = self.gather(failure)
        if failure is not None:
            raise own
        for rank, other in enumerate(failures):
            if other is not None:
                kind, message = other
                raise _USER_ERRORS.get(kind, RuntimeError)(f"rank {rank} failed: {message}")
        return result


@contextmanager
def rank_context() -> Iterator[RankContext]:
    """The current process group's rank and size; under ``torchrun`` without a group, start a gloo
    one for the duration (and end it afterwards)."""
    if dist.is_available() and dist.is_initialized():
        yield RankContext(dist.get_rank(), dist.get_world_size())
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield RankContext()
        return
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed; unset WORLD_SIZE")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} is set but {', '.join(missing)} is not: launch with torchrun")
    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=world_size)
    try:
        yield RankContext(dist.get_rank(), world_size)
        dist.barrier()  # nobody tears the group down while another rank still talks
    finally:
        dist.destroy_process_group()
