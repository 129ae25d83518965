"""Writing the bundle that ``adabldm-run --bundle`` reads (its layout and reader:
:mod:`adabldm_engine.bundle`). The manifest is written last: a folder without one is an
unfinished export.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from adabldm_calibration.capture import (
    FOLDER,
    MIN_STEPS,
    CaptureConfig,
    capture,
    save_capture,
)
from adabldm_calibration.loader import captured_feeds
from adabldm_core.io import file_sha256, folder_lock, write_json
from adabldm_core.precision import EXPORT_PRECISIONS, Precision
from adabldm_engine.backends import OrtBackend, TorchBackend
from adabldm_engine.bundle import DECODER_KEYS, FORMAT_VERSION, MANIFEST, BundleError

from adabldm_ref.config import SchedulerConfig
from adabldm_ref.models import Models
from adabldm_ref.networks import network_modules, network_specs

from .onnx_export import copy_graph, export_onnx, slim
from .validate import TOLERANCES, ExportValidationError, compare, random_feeds

log = logging.getLogger("adabldm.export")


@dataclass(frozen=True)
class ExportConfig:
    out: Path
    resolution: int = 256
    batch_sizes: tuple[int, ...] = (1, 4)  # dynamic batch; TensorRT profile min..max
    opset: int = 17
    dynamo: bool = False  # torch.export-based exporter (opset 18) instead of TorchScript
    split_controlnet: bool = False  # ControlNet and UNet as two graphs
    simplify: bool = True  # onnxslim, kept only where outputs stay within tolerance
    precision: Precision = Precision.FP32
    capture_steps: int = 10  # reference steps run to capture real inputs
    ok_images: tuple[str, ...] = ()  # the user's OK images for the capture; empty: scikit-image textures
    force: bool = False  # overwrite a non-empty --out

    def __post_init__(self):
        if self.resolution <= 0 or self.resolution % 64:  # as adabldm-run; checked before anything is written
            raise ValueError(f"resolution {self.resolution}: expected a positive multiple of 64")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes {self.batch_sizes}: expected positive integers")
        object.__setattr__(self, "precision", Precision.of(self.precision, EXPORT_PRECISIONS, "export precision"))


def tool_versions() -> dict[str, str]:
    import diffusers
    import onnx
    import transformers

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "onnx": onnx.__version__,
                "python": platform.python_version()}
    for name in ("onnxruntime", "tensorrt"):  # optional runtimes, where installed
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


def _files_of(graph: Path) -> list[Path]:
    data = graph.with_name(graph.name + ".data")
    return [graph, data] if data.exists() else [graph]


def _export_one(name, spec, module, cfg: ExportConfig, feeds, reference) -> dict:
    """Export, optionally simplify, validate; return the network's manifest entry."""

    path = cfg.out / "onnx" / f"{name}.onnx"
    export_onnx(spec, module, path, batch=max(cfg.batch_sizes), opset=cfg.opset, dynamo=cfg.dynamo)
    tol = TOLERANCES[cfg.precision]
    report = {"plain": compare(OrtBackend(spec, path), reference, feeds)}
    simplified = False
    if cfg.simplify:
        backup = path.with_name(path.name + ".plain")
        copy_graph(path, backup)
        try:
            slim(path)
            report["simplified"] = compare(OrtBackend(spec, path), reference, feeds)
            simplified = worst_rel_l2(report["simplified"]) <= max(tol, worst_rel_l2(report["plain"]))
        except Exception as exc:  # onnxslim is best effort: keep the plain graph
            log.warning("%s: onnxslim failed (%s); keeping the plain graph", name, exc)
        if not simplified:
            copy_graph(backup, path)
        for f in _files_of(backup):
            f.unlink()
    final = report["simplified"] if simplified else report["plain"]
    entry = {
        **spec.to_dict(),
        "file": f"onnx/{name}.onnx",
        "sha256": {str(f.relative_to(cfg.out)): file_sha256(f) for f in _files_of(path)},
        "exporter": "dynamo" if cfg.dynamo else "torchscript",
        "opset": max(cfg.opset, 18) if cfg.dynamo else cfg.opset,
        "simplified": simplified,
        "trt_profile": spec.profile(cfg.batch_sizes),
        "validation": {"tolerance_rel_l2": tol, "worst": final, "report": report, "passed": worst_rel_l2(final) <= tol},
    }
    return entry


def worst_rel_l2(report: dict[str, dict[str, float]]) -> float:
    """The largest rel. L2 of a validation report ({feed: {output: ...}})."""
    return max(v["rel_l2"] for v in report.values())


EXPORT_LOCK = ".adabldm-export.lock"


def staging_dir(out: Path) -> Path:
    """Where an export is written before it replaces ``out``'s bundle: inside it, so on the
    same file system and writable wherever ``out`` is (its parent may not be)."""
    return out / ".exporting"


def install_staged(staged: Path, out: Path) -> None:
    """Move every entry of ``staged`` into ``out``, replacing same-named ones, the manifest last.

    Entries of ``out`` the export does not write (``trt/``, the user's files) stay."""
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the last rename: an unfinished bundle
    for entry in sorted(staged.iterdir(), key=lambda p: p.name == MANIFEST):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        entry.rename(target)
    staged.rmdir()


def export_bundle(models: Models, cfg: ExportConfig, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Export every network of ``models`` into ``cfg.out``; raise if one fails validation.

    The bundle is written into a staging folder and moved into ``cfg.out`` only once every
    graph passed: a failed, interrupted or refused export leaves an existing bundle as it was
    (``--force`` used to delete its manifest first, so a bad --ok-images file lost it)."""

    out = cfg.out
    if (out / MANIFEST).exists() and not cfg.force:
        raise BundleError(f"{out} already holds a bundle; pass --force to overwrite it")
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out} is a file: expected a bundle folder")
    # One export per --out at a time (a second shared the staging folder); the lock also
    # removes a --out it made if nothing was written into it.
    with folder_lock(out, EXPORT_LOCK):
        staged = staging_dir(out)
        shutil.rmtree(staged, ignore_errors=True)  # an interrupted export's leftovers
        try:
            manifest = _export_into(models, dataclasses.replace(cfg, out=staged), cfg, progress)
            install_staged(staged, out)
        except ExportValidationError:
            (staged / "validation.json").replace(out / "validation.json")  # the report stays where users look
            raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return manifest


def _export_into(models: Models, cfg: ExportConfig, user_cfg: ExportConfig, progress: Callable[[str], None]) -> dict:
    """The export itself, into ``cfg.out`` (the staging folder); ``user_cfg``: as asked, for the record."""
    out = cfg.out
    out.mkdir(parents=True)  # and --out above it
    specs = network_specs(models, cfg.resolution, cfg.split_controlnet)
    modules = network_modules(models)
    vocab = models.text_encoder.config.vocab_size
    progress("capturing inputs from a reference run")
    captured = _capture(models, cfg)
    networks, failures = {}, []
    for name, spec in specs.items():
        progress(f"exporting {name}")
        module = modules[name]()
        feeds = random_feeds(spec, cfg.batch_sizes, vocab) + captured[name]
        entry = _export_one(name, spec, module, cfg, feeds, TorchBackend(spec, module))
        entry["validation"]["feeds"] = {"random": len(feeds) - len(captured[name]), "captured": len(captured[name])}
        networks[name] = entry
        v = entry["validation"]
        if not v["passed"]:
            failures.append(f"{name}: rel. L2 {worst_rel_l2(v['worst']):.2e} > {v['tolerance_rel_l2']:.0e}")
    write_json(out / "validation.json", {k: v["validation"] for k, v in networks.items()})
    if failures:
        raise ExportValidationError("exported graphs disagree with PyTorch: " + "; ".join(failures)
                                    + f" (report: {user_cfg.out / 'validation.json'})")
    progress("writing decoder weights and manifest")
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": models.name, "identity": models.identity()},
        "resolution": cfg.resolution,
        "latent_shape": [4, cfg.resolution // 8, cfg.resolution // 8],
        "batch_sizes": list(cfg.batch_sizes),
        "latent_scale": models.latent_scale,
        "scheduler": asdict(SchedulerConfig()),
        "precision": cfg.precision,
        "split_controlnet": cfg.split_controlnet,
        "networks": networks,
        "adaptation": _write_decoder(models, out),
        "tokenizer": _write_tokenizer(models, out),
        "tools": tool_versions(),
        "calibration": {"capture": "calibration/capture.json"},
        "export_settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(user_cfg).items()},
    }
    write_json(out / MANIFEST, manifest)
    return manifest


VALIDATION_FEEDS = 4  # captured single-sample feeds per network, spread over samples and timesteps


def _capture(models: Models, cfg: ExportConfig) -> dict[str, list[dict]]:
    """Capture real inputs into ``out/calibration``; the validation feeds come from its loader."""

    steps = max(cfg.capture_steps, MIN_STEPS)  # fewer steps would skip the pixel stage's inputs
    cap = capture(models, CaptureConfig(resolution=cfg.resolution, steps=steps, images=cfg.ok_images))
    save_capture(cap, cfg.out / FOLDER)
    return captured_feeds(models, cap, cfg.resolution, VALIDATION_FEEDS, cfg.split_controlnet)


def _write_decoder(models: Models, out: Path) -> dict:
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in models.vae.state_dict().items() if k.startswith(DECODER_KEYS)}
    path = out / "vae_decoder.safetensors"
    save_file(sd, str(path))
    (out / "vae_config.json").write_text(json.dumps(dict(models.vae.config), indent=2, default=lambda o: str(o) if isinstance(o, Path) else list(o)))
    return {
        "file": path.name,
        "config": "vae_config.json",
        "sha256": {path.name: file_sha256(path), "vae_config.json": file_sha256(out / "vae_config.json")},
    }


def _write_tokenizer(models: Models, out: Path) -> dict:
    models.tokenizer.save_pretrained(out / "tokenizer")
    files = sorted(p for p in (out / "tokenizer").iterdir() if p.is_file())
    return {"dir": "tokenizer", "sha256": {f"tokenizer/{p.name}": file_sha256(p) for p in files}}
