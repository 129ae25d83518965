"""Network specs: input/output names, shapes with a symbolic batch, dtypes.

Shapes are tuples whose entries are ints (static) or the symbols "B" (samples in a batch)
and "B2" (= 2B, the classifier-free-guidance batch). Spatial sizes are static per bundle
(one resolution), so TensorRT can build static engines per (resolution, batch).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
BATCH_SYMBOLS = {"B": 1, "B2": 2}  # symbol -> multiple of the sample batch


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints and batch symbols
    dtype: str = "float32"

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(BATCH_SYMBOLS[d] * batch if isinstance(d, str) else d for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @property
    def batch_axis(self) -> tuple[int, int] | None:
        """(axis, multiple of the sample batch) of the batch dimension; None if unbatched."""
        return next(((i, BATCH_SYMBOLS[d]) for i, d in enumerate(self.shape) if d in BATCH_SYMBOLS), None)


@dataclass(frozen=True)
class NetworkSpec:
    """What one exported graph takes and gives."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def sample_batch(self, feed: Mapping[str, torch.Tensor]) -> int | None:
        """The sample batch B of ``feed``, read from its first batched input (None: none is)."""
        for t in self.inputs:
            if t.batch_axis is not None:
                axis, multiple = t.batch_axis
                return feed[t.name].shape[axis] // multiple
        return None

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
            if any(isinstance(d, str) for d in t.shape)
        }

    def profile(self, batch_sizes: tuple[int, ...]) -> dict[str, list[list[int]]]:
        """TensorRT min / opt / max shapes per input (opt = the largest batch)."""
        lo, hi = min(batch_sizes), max(batch_sizes)
        return {t.name: [list(t.concrete(lo)), list(t.concrete(hi)), list(t.concrete(hi))] for t in self.inputs}

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def random_inputs(spec: NetworkSpec, batch: int, generator: torch.Generator, vocab: int = 49408) -> dict[str, torch.Tensor]:
    """Seeded inputs in each input's natural range (ids, timesteps, [0, 1] hints, N(0, 1))."""
    feed = {}
    for t in spec.inputs:
        shape = t.concrete(batch)
        if t.dtype == "int64":
            feed[t.name] = torch.randint(0, vocab, shape, generator=generator)
        elif t.name == "timestep":
            feed[t.name] = torch.randint(1, 1000, (), generator=generator).float()
        elif t.name == "control_scale":
            feed[t.name] = torch.tensor(1.0)
        elif t.name in ("hint",):
            feed[t.name] = torch.rand(shape, generator=generator)
        elif t.name == "image":
            feed[t.name] = torch.rand(shape, generator=generator) * 2 - 1
        else:
            feed[t.name] = torch.randn(shape, generator=generator)
    return feed


@contextmanager
def active(*backends) -> Iterator[None]:
    """Backends (anything with ``active``/``activate``/``deactivate``) active inside the
    block; those this call activated are deactivated after it, the others left as they were."""
    started = [b for b in backends if not b.active]
    try:
        for b in started:
            b.activate()
        yield
    finally:
        for b in reversed(started):
            b.deactivate()
