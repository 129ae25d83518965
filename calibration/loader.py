"""Data loaders over captured feeds: Polygraphy's protocol, ONNX Runtime's, and torch feeds.

Polygraphy's data-loader protocol is an iterable of ``{input name: numpy array}``; the
loader here needs nothing from Polygraphy, so it serves TensorRT INT8 calibration
(``polygraphy.backend.trt.Calibrator``), ``polygraphy run``-style comparisons, ONNX
Runtime's static quantisation (:func:`ort_calibration_reader`) and the export validation
(:meth:`CapturedLoader.torch_feeds`) alike.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from adabldm_core.specs import NetworkSpec
from adabldm_engine.backends import TorchBackend

from adabldm_ref.networks import network_modules, network_specs, split_feeds

from .capture import Capture, CaptureError, as_numpy


def spread(n: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(n)`` (first and last included), or all."""
    if limit is None or n <= limit:
        return list(range(n))
    if limit < 1:
        raise CaptureError(f"feed limit {limit}: expected a positive integer")
    return torch.linspace(0, n - 1, limit).round().long().tolist()


def _rows(x: torch.Tensor, shape: tuple, i: int, n: int) -> torch.Tensor:
    """Sample row ``i`` of a batch of ``n``: one row on a "B" axis, rows i and n+i on "B2"."""
    if "B" in shape:
        return x.narrow(shape.index("B"), i, 1)
    axis = shape.index("B2")
    return torch.cat([x.narrow(axis, i, 1), x.narrow(axis, n + i, 1)], axis)


def rebatch(feeds: Sequence[dict[str, torch.Tensor]], spec: NetworkSpec, batch: int) -> list[dict[str, torch.Tensor]]:
    """Feeds of exactly ``batch`` samples from the rows of ``feeds``.

    Rows combine only with rows that share every unbatched input (the timestep, the
    control scale), so a UNet feed never mixes timesteps; rows left over (fewer than
    ``batch`` for some timestep) are dropped.
    """
    batched = [t for t in spec.inputs if "B" in t.shape or "B2" in t.shape]
    fixed = [t.name for t in spec.inputs if t not in batched]
    groups: dict[tuple, list[dict[str, torch.Tensor]]] = {}
    for feed in feeds:
        n = spec.sample_batch(feed)
        n = 1 if n is None else n  # no batched input: one sample
        key = tuple(feed[k].numpy().tobytes() for k in fixed)
        rows = groups.setdefault(key, [])
        rows.extend({t.name: _rows(feed[t.name], t.shape, i, n) for t in batched} | {k: feed[k] for k in fixed}
                    for i in range(n))
    out = []
    for rows in groups.values():
        for k in range(0, len(rows) - batch + 1, batch):
            chunk = rows[k : k + batch]
            feed = {k2: chunk[0][k2] for k2 in fixed}
            for t in batched:
                parts = [r[t.name] for r in chunk]
                if "B" in t.shape:
                    feed[t.name] = torch.cat(parts, t.shape.index("B"))
                else:
                    axis = t.shape.index("B2")
                    halves = [p.chunk(2, axis) for p in parts]
                    feed[t.name] = torch.cat([h[0] for h in halves] + [h[1] for h in halves], axis)
            out.append({t.name: feed[t.name] for t in spec.inputs})
    return out


class CapturedLoader:
    """The captured feeds of one network as a Polygraphy data loader.

    Iterating yields ``{input name: numpy array}`` (C-contiguous, the graph's dtypes).
    ``limit`` keeps that many feeds spread over the run (all stages and timesteps);
    ``batch`` (needs ``spec``) re-batches to exactly that many samples per feed, as
    TensorRT calibration at a profile's opt shape requires.
    """

    def __init__(self, capture: Capture, network: str, spec: NetworkSpec | None = None,
                 batch: int | None = None, limit: int | None = None):
        if network not in capture.feeds:
            raise CaptureError(f"network {network!r} not in the capture; it holds {capture.networks}")
        feeds = list(capture.feeds[network])
        if spec is not None:
            missing = sorted({n for f in feeds for n in spec.input_names if n not in f})
            if missing:
                raise CaptureError(f"captured {network} feeds lack inputs {missing} of the graph")
            feeds = [{n: f[n] for n in spec.input_names} for f in feeds]
        if batch is not None:
            if spec is None:
                raise CaptureError("re-batching captured feeds needs the network's spec")
            feeds = rebatch(feeds, spec, batch)
            if not feeds:
                raise CaptureError(f"captured {network} feeds have fewer than {batch} samples per timestep;"
                                   " capture more samples (samples_per_image) or use a smaller batch")
        self.network, self.spec = network, spec
        self.feeds = [feeds[i] for i in spread(len(feeds), limit)]
        self.input_metadata = None  # Polygraphy's loaders set this; unused here

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for feed in self.feeds:
            yield as_numpy(feed)

    def torch_feeds(self) -> list[dict[str, torch.Tensor]]:
        """The feeds as torch tensors (copies: callers may keep them)."""
        return [{k: v.clone() for k, v in feed.items()} for feed in self.feeds]


def ort_calibration_reader(loader: CapturedLoader):
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``loader`` (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(loader)

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(loader)

    return _Reader()


def captured_feeds(models, cap: Capture, resolution: int, limit: int | None, split_controlnet: bool = False
                   ) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Single-sample captured feeds per network (``limit`` each, spread over the run), as
    torch tensors; with ``split_controlnet`` also those of the split ControlNet and UNet
    graphs, derived from unet_control's by running the ControlNet."""

    specs = network_specs(models, resolution)  # the captured (folded) networks
    feeds = {name: CapturedLoader(cap, name, specs[name], batch=1, limit=limit).torch_feeds() for name in cap.networks}
    if split_controlnet:
        spec = network_specs(models, resolution, split_controlnet=True)["controlnet"]
        controlnet = TorchBackend(spec, network_modules(models)["controlnet"]())
        feeds["controlnet"], feeds["unet"] = split_feeds(feeds["unet_control"], controlnet)
    return feeds
