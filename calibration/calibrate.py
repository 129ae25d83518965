"""``adabldm-calibrate``'s library call: capture, FP16 precision map, INT8, into a bundle.

<bundle>/calibration/
  capture.json, captured.npz   inputs captured from reference runs (also by adabldm-export)
  precision.json               FP32 layers per network for FP16 builds, errors with and without
  int8/unet_control.onnx       QDQ INT8 UNet+ControlNet (ONNX Runtime, CPU)
  int8.json                    its settings, end-to-end parity vs FP32 and the verdict
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from adabldm_core.io import write_json
from adabldm_engine.bundle import Bundle

from adabldm_ref.models import Models
from adabldm_ref.networks import network_modules

from .capture import (
    FOLDER,
    INDEX,
    Capture,
    CaptureConfig,
    capture,
    capture_matches,
    load_capture,
    save_capture,
)
from .int8 import RECORD, Int8Config, quantize_bundle
from .loader import captured_feeds
from .precision_map import (
    PrecisionConfig,
    find_precision_map,
    map_entry,
    write_precision_map,
)
from .precision_onnx import onnx_block_list, onnxruntime_fp16_errors


@dataclass(frozen=True)
class CalibrateConfig:
    bundle: Path
    capture: CaptureConfig | None = None  # capture again with these settings; None: the bundle's capture
    precision: PrecisionConfig | None = None  # search the FP16 precision map; None: skip
    networks: tuple[str, ...] = ()  # networks of the precision map; empty: all of the bundle
    int8: Int8Config | None = None  # quantise the UNet+ControlNet to INT8 and judge it; None: skip

    def __post_init__(self):
        if self.networks and self.precision is None:  # else silently ignored
            raise ValueError(f"--networks {','.join(self.networks)}: only the precision map takes networks;"
                             " add --precision-map")


def check_networks(networks: tuple[str, ...], bundle_networks) -> None:
    """Raise naming the unknown names and the bundle's own (a KeyError traceback, before)."""
    unknown = [n for n in networks if n not in bundle_networks]
    if unknown:
        raise ValueError(f"--networks {','.join(unknown)}: not in this bundle; expected a comma list of"
                         f" {', '.join(bundle_networks)}")


def calibrate(models: Models, cfg: CalibrateConfig, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run the steps ``cfg`` asks for on the bundle; returns what was written and measured."""

    bundle = Bundle.open(cfg.bundle)
    bundle.check(identity=models.identity())
    check_networks(cfg.networks, list(bundle.manifest["networks"]))  # before a capture that takes minutes
    folder = bundle.root / FOLDER
    if cfg.capture is not None:
        progress("capturing inputs from reference runs")
        cap = capture(models, dataclasses.replace(cfg.capture, resolution=bundle.resolution))
        save_capture(cap, folder)
    else:
        cap = load_capture(folder)
        capture_matches(cap, models, bundle.resolution)
    report: dict = {"capture": {name: len(feeds) for name, feeds in cap.feeds.items()}}
    sha = _capture_sha(folder)
    if cfg.precision is not None:
        entries = precision_map(bundle, models, cap, cfg.precision, cfg.networks, progress)
        report["precision"] = {"file": str(write_precision_map(folder, entries, cfg.precision, sha)), "networks": entries}
    if cfg.int8 is not None:
        progress("quantising unet_control to INT8 and comparing end to end")
        _, record = quantize_bundle(bundle, cap, cfg.int8)
        record["capture_sha256"] = sha
        write_json(folder / RECORD, record)
        report["int8"] = record
    return report


def _capture_sha(folder: Path) -> str:
    import json

    return json.loads((folder / INDEX).read_text())["sha256"]


def precision_map(bundle, models: Models, cap: Capture, cfg: PrecisionConfig, networks=(),
                  progress: Callable[[str], None] = lambda s: None) -> dict[str, dict]:
    """The precision-map entry of each network (search in PyTorch, nodes and ORT figures from the bundle's graphs)."""
    import onnx


    modules = network_modules(models)
    split = "controlnet" in bundle.manifest["networks"]
    feeds = captured_feeds(models, cap, bundle.resolution, cfg.feeds, split)  # once for all networks
    entries = {}
    for name in networks or list(bundle.manifest["networks"]):
        progress(f"FP16 precision map of {name}")
        spec, module = bundle.spec(name), modules[name]()
        result = find_precision_map(name, spec, module, feeds[name], cfg)
        graph = onnx.load(str(bundle.graph(name)), load_external_data=False)
        nodes = onnx_block_list(graph, [n for n, _ in module.named_modules()], result.modules)
        ort = onnxruntime_fp16_errors(bundle.graph(name), spec, feeds[name], nodes)
        entries[name] = map_entry(result, nodes, ort)
    return entries
