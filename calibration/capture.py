"""Capture: the inputs each network really sees when AdaBLDM runs on real OK images.

Random tensors are not the distribution of a blended defect sampler: latents at each
stage and timestep, trimap hints, the prompt's and the empty prompt's embeddings, the
pixel stage's blended images and predicted x0. A capture runs the reference pipeline
(PyTorch modules, every network behind a ``RecordingBackend``) on a handful of OK
images and keeps every call's feed, per network.

On disk (``<bundle>/calibration/``):
  captured.npz           the tensors (compressed, no pickle), each distinct tensor once (a
                         hint or a text context repeats over timesteps), and the feed index
  capture.json           format version, the settings that produced it, the model
                         identity, sha256 of the tensors, feeds per network
The JSON is written last: a folder without it holds no finished capture.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from adabldm_core.io import file_sha256, read_image, read_versioned_json, write_json
from adabldm_engine.runtime import RecordingBackend, engine_pipeline, torch_engines
from tqdm import tqdm

from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
from adabldm_ref.models import Models
from adabldm_ref.pipeline import OkImage, ProceduralMasks, plan_sample, prepare_ok_image
from adabldm_ref.procedural import KINDS
from adabldm_ref.sampler import stage_plan

FORMAT_VERSION = 1
FOLDER = "calibration"  # inside a bundle
TENSORS = "captured.npz"
INDEX = "capture.json"
INDEX_KEY = "__index__"  # the feed index inside the npz (a JSON string)
DEFAULT_TEXTURES = ("brick", "gravel", "grass")  # scikit-image sample textures (shipped, no download)
MIN_STEPS = 5  # the fewest DDIM steps whose run has all three stages (free, latent, pixel)


class CaptureError(ValueError):
    """A capture that cannot be made or read (bad settings, missing, modified, other version)."""


@dataclass(frozen=True)
class CaptureConfig:
    """What a capture runs. Written into capture.json next to the tensors it produced."""

    resolution: int = 256  # the bundle's working resolution (graphs are static in space)
    # DDIM steps of the reference run. The stage windows are fractions of the step count,
    # so 10 steps (5 at least) visit free diffusion, latent editing and pixel editing.
    steps: int = 10
    images: tuple[str, ...] = ()  # the user's OK image files; empty: ``textures``
    textures: tuple[str, ...] = DEFAULT_TEXTURES  # scikit-image textures used without images
    max_images: int = 8  # a handful: cost grows with each image, coverage hardly does
    # Samples per image, each with its own seed and defect mask. Two per image give every
    # timestep enough rows to be re-batched to the bundle's largest batch (TensorRT
    # calibrates at one batch size).
    samples_per_image: int = 2
    batch: int = 4  # samples per reference run; feeds carry it (2x in CFG graphs)
    seed: int = 0  # base seed of the samples, as ``adabldm-run --seed``
    object_name: str = "texture"  # prompt "a {object} with a {defect}", as the run will use
    defect: str = "defect"
    mask_kinds: tuple[str, ...] = KINDS  # procedural defect masks placed on the OK images

    def __post_init__(self):
        GenerationConfig(resolution=self.resolution)  # same resolution check as a run
        plan = stage_plan(SamplerConfig(steps=max(self.steps, 2)))
        if not 0 < plan.latent_start <= plan.pixel_start < self.steps:
            raise CaptureError(f"capture steps {self.steps}: free, latent and pixel stages must all run"
                               f" (their inputs differ); use at least {MIN_STEPS} steps")
        for name in ("max_images", "samples_per_image", "batch"):
            if getattr(self, name) < 1:
                raise CaptureError(f"capture {name} {getattr(self, name)}: expected a positive integer")
        unknown = [k for k in self.mask_kinds if k not in KINDS]
        if unknown or not self.mask_kinds:
            raise CaptureError(f"mask kinds {list(self.mask_kinds)}: expected some of {list(KINDS)}")

    def generation(self) -> GenerationConfig:
        """The run's settings; adaptation is off (it never calls an exported network)."""
        return GenerationConfig(
            object_name=self.object_name, defect=self.defect, resolution=self.resolution, seed=self.seed,
            sampler=SamplerConfig(steps=self.steps), adapt=AdaptConfig(iters=0),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Capture:
    """Feeds per network (``{network: (feed, ...)}``, feed = {input name: tensor}) and settings."""

    feeds: Mapping[str, tuple[dict[str, torch.Tensor], ...]]
    settings: dict = field(repr=False)

    @property
    def networks(self) -> list[str]:
        return list(self.feeds)


def ok_images(cfg: CaptureConfig) -> list[OkImage]:
    """The user's images (``cfg.images``) or scikit-image textures, at most ``max_images``."""
    if cfg.images:

        chosen = [(Path(p).name, read_image(p)) for p in cfg.images[: cfg.max_images]]
    else:
        from skimage import data

        unknown = [t for t in cfg.textures if not callable(getattr(data, t, None))]
        if unknown or not cfg.textures:
            raise CaptureError(f"textures {list(cfg.textures)}: expected scikit-image sample names such as"
                               f" {list(DEFAULT_TEXTURES)}")
        chosen = [(f"skimage:{t}", getattr(data, t)()) for t in cfg.textures[: cfg.max_images]]
    return [OkImage(name, prepare_ok_image(rgb, cfg.resolution)) for name, rgb in chosen]


def capture(models: Models, cfg: CaptureConfig) -> Capture:
    """Run the reference pipeline on the OK images and record every network's feeds.

    Samples ``0 .. n*samples_per_image - 1`` (sample i uses image ``i % n``) run in
    batches of ``cfg.batch``. Deterministic: same models and config, same tensors.
    """

    oks = ok_images(cfg)
    gen = cfg.generation()
    engines = {k: RecordingBackend(v) for k, v in torch_engines(models, cfg.resolution).items()}
    masks = ProceduralMasks(tuple(cfg.mask_kinds))
    plans = [plan_sample(i, gen, oks, masks) for i in range(len(oks) * cfg.samples_per_image)]
    starts = range(0, len(plans), cfg.batch)
    with engine_pipeline(engines, models.tokenizer, models.vae, models.latent_scale, gen) as pipe:
        for k in tqdm(starts, desc="capture", unit="batch", disable=None):  # shown on a terminal only
            pipe.run(plans[k : k + cfg.batch])
    settings = {
        "config": cfg.to_dict(),
        "ok_images": [{"name": ok.name, "sha256": hashlib.sha256(ok.rgb.tobytes()).hexdigest()} for ok in oks],
        "samples": [{"index": p.index, "seed": p.seed, "source": p.source, "mask": p.mask_source} for p in plans],
        "generation_digest": gen.digest(),
        "model_identity": models.identity(),
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from capture.json (lists, not tuples)
    return Capture({name: tuple(e.feeds) for name, e in engines.items()}, settings)


# ---------------------------------------------------------------------------------------
# File format


def _digest(t: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _pack(feeds: Mapping[str, tuple[dict, ...]]) -> tuple[dict[str, torch.Tensor], dict[str, list[dict[str, str]]]]:
    """Distinct tensors under ``network.input.k`` keys, and per network the keys of each feed."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple[str, str, str], str] = {}
    count: dict[tuple[str, str], int] = {}
    index: dict[str, list[dict[str, str]]] = {}
    for network, network_feeds in feeds.items():
        index[network] = []
        for feed in network_feeds:
            keys = {}
            for name, t in feed.items():
                t = t.detach().cpu().contiguous()
                d = (network, name, _digest(t))
                if d not in seen:
                    k = count[network, name] = count.get((network, name), -1) + 1
                    seen[d] = f"{network}.{name}.{k}"
                    tensors[seen[d]] = t
                keys[name] = seen[d]
            index[network].append(keys)
    return tensors, index


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so equal captures give equal bytes."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arrays[key], order="C"), allow_pickle=False)


def save_capture(cap: Capture, folder: str | Path) -> Path:
    """Write ``cap`` into ``folder`` (captured.npz, then capture.json); returns the JSON path."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).unlink(missing_ok=True)
    tensors, index = _pack(cap.feeds)
    arrays = {k: t.numpy() for k, t in tensors.items()}
    arrays[INDEX_KEY] = np.array(json.dumps(index, sort_keys=True))
    _write_npz(folder / TENSORS, arrays)
    networks = {
        name: {"feeds": len(fs), "inputs": {k: list(v.shape) for k, v in fs[0].items()} if fs else {}}
        for name, fs in cap.feeds.items()
    }
    write_json(folder / INDEX, {
        "format_version": FORMAT_VERSION, "file": TENSORS, "bytes": (folder / TENSORS).stat().st_size,
        "sha256": file_sha256(folder / TENSORS), "networks": networks, "settings": cap.settings,
    })
    return folder / INDEX


def load_capture(folder: str | Path) -> Capture:
    """Read a capture written by :func:`save_capture`; CaptureError names what is wrong."""
    folder = Path(folder)
    redo = f"capture again: adabldm-calibrate --bundle {folder.parent} without --reuse-capture (or re-export the bundle)"
    if not (folder / INDEX).is_file():
        raise CaptureError(f"no capture in {folder} ({INDEX} missing); {redo}")
    info = read_versioned_json(folder / INDEX, FORMAT_VERSION, "capture", redo, CaptureError)
    path = folder / info["file"]
    if not path.is_file():
        raise CaptureError(f"capture tensors missing: {path}; {redo}")
    if file_sha256(path) != info["sha256"]:
        raise CaptureError(f"capture tensors modified since capture: {path} (sha256 differs); {redo}")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    index = json.loads(str(arrays.pop(INDEX_KEY)))
    tensors = {k: torch.from_numpy(a) for k, a in arrays.items()}
    feeds = {net: tuple({name: tensors[key] for name, key in keys.items()} for keys in entries)
             for net, entries in index.items()}
    return Capture(feeds, info["settings"])


def config_of(cap: Capture) -> CaptureConfig:
    """The CaptureConfig a capture was made with (from its settings)."""
    c = cap.settings["config"]
    return CaptureConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})


def ok_images_of(cap: Capture) -> list[OkImage]:
    """The capture's OK images, read again; CaptureError if one changed since."""
    oks = ok_images(config_of(cap))
    for ok, rec in zip(oks, cap.settings["ok_images"]):
        if hashlib.sha256(ok.rgb.tobytes()).hexdigest() != rec["sha256"]:
            raise CaptureError(f"OK image {ok.name} changed since the capture; capture again")
    return oks


def capture_matches(cap: Capture, models: Models | None = None, resolution: int | None = None) -> None:
    """Refuse a capture made from other weights or at another resolution."""
    s = cap.settings
    if resolution is not None and s["config"]["resolution"] != resolution:
        raise CaptureError(f"capture is at {s['config']['resolution']} px, not {resolution} px; capture again")
    if models is not None and s["model_identity"] != models.identity():
        raise CaptureError(f"capture was made with model {s['model_identity']}, not {models.identity()}"
                           " (weights differ); capture again with this model")


def as_numpy(feed: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.detach().cpu().numpy(), order="C") for k, v in feed.items()}  # keeps 0-d
