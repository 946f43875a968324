"""Replaying one network call of a sampling loop as a CUDA graph.

A small UNet at 28x28 (or any network at a small batch) is bound by kernel launches on a GPU:
hundreds of kernels per evaluation, each with a few microseconds of work, queued one by one
from Python. A CUDA graph records them once and launches them all with one call, so a sampling
loop of tens of steps stops waiting on the host. The pattern follows PyTorch's
``torch.cuda.graphs`` notes: warm up on a side stream, capture, then copy each step's inputs into
the captured (static) tensors and replay.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["GraphedCall", "use_cuda_graph"]


def use_cuda_graph(requested: bool | None, device: torch.device) -> bool:
    """Whether a sampling loop on ``device`` should replay its network as a CUDA graph.

    ``None`` (the default of the samplers) means "on CUDA devices"; ``True`` on another device
    is an error rather than a silent fallback, so that a benchmark never reports the wrong path.
    """
    if requested is None:
        return device.type == "cuda"
    if requested and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; the model is on {device}")
    return bool(requested)


class GraphedCall:
    """``fn(x, t)`` captured as a CUDA graph at its first call and replayed at every later one.

    ``fn`` must be a pure function of ``x`` (a tensor of fixed shape, dtype and device) and of
    ``t`` (a 0-dim timestep tensor); everything else it reads (weights, labels, conditions) must
    stay alive and unchanged for the life of this object: one instance per sampling loop. The
    output is cloned out of the graph's memory, so callers (multistep samplers keep past outputs)
    may hold on to it across replays. If capture fails (an operation that cannot be captured),
    the call falls back to running ``fn`` eagerly, with a warning.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], warmup: int = 2):
        self.fn, self.warmup = fn, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = False
        self._x: Tensor | None = None
        self._t: Tensor | None = None
        self._out: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.eager:
            return self.fn(x, t.to(x.device))
        if self.graph is None:
            self._capture(x, t)
            if self.eager:
                return self.fn(x, t.to(x.device))
        else:
            self._x.copy_(x)
            # a scalar fill is a kernel argument: no host->device copy, no synchronisation
            self._t.fill_(t.item())
        self.graph.replay()
        return self._out.clone()

    def _autocast(self) -> torch.autocast:
        # Capture under the caller's autocast settings but without its weight-cast cache: cached
        # casts made during capture would be freed when the caller's autocast exits, while the
        # graph still reads them (PyTorch's CUDA-graph notes); uncached, the casts are recorded.
        return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                              enabled=torch.is_autocast_enabled("cuda"), cache_enabled=False)

    def _capture(self, x: Tensor, t: Tensor) -> None:
        self._x, self._t = x.clone(), t.to(x.device).clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        try:
            with torch.cuda.stream(side), self._autocast():
                for _ in range(self.warmup):  # lazy initialisation (cuDNN plans, workspaces) before capture
                    self.fn(self._x, self._t)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), self._autocast():
                self._out = self.fn(self._x, self._t)
        except RuntimeError as err:
            warnings.warn(f"CUDA graph capture failed ({str(err).strip().splitlines()[0]}); sampling without "
                          "graphs (pass cuda_graph=False to skip the attempt)", RuntimeWarning, stacklevel=3)
            torch.cuda.synchronize(x.device)
            self.eager, self._x, self._t, self._out = True, None, None, None
            return
        self.graph = graph
