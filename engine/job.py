"""The bulk job: inputs -> samples in the MVTec AD layout, resumable, one manifest line each.

Layout under ``out`` (the run root; anomalib's ``root``, one category per run root):
  {category}/train/good/NNN.png                  the OK images used, at the run resolution
  {category}/test/{defect}/NNNN.png              adapted synthetic defect image
  {category}/ground_truth/{defect}/NNNN_mask.png binary defect mask (0 / 255)
  extra/{defect}/NNNN_{source,blended,trimap}.png
  manifest.jsonl (all defect types), runs/{defect}.json, contact_sheet_{defect}.png, the lock
Only anomalib's MVTec tree is inside the category folder (its readers take every PNG there
as split/label/file); everything else is beside it. The category is ``--category``, by
default the ``--object`` name as a folder name (:func:`category_name`).
Samples are computed in fixed chunks of ``batch_size`` consecutive indices, so a resumed
run computes every remaining sample exactly as an uninterrupted run would. With a gate
(engine/gate.py), a sample failing it is made again alone from derived seeds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from adabldm_core.contact import contact_sheet
from adabldm_core.io import (
    InputError,
    append_line,
    folder_lock,
    list_images,
    read_gray,
    read_image,
    write_json,
    write_png,
    write_text,
)
from adabldm_core.metrics import sample_quality
from adabldm_core.precision import ADAPT_PRECISIONS, Precision
from adabldm_engine.bundle import Bundle
from PIL import Image
from tqdm import tqdm

from adabldm_ref.config import LATENT_STRIDE, GenerationConfig
from adabldm_ref.masks import (
    FOREGROUND_MIN_AREA,
    PlacementError,
    foreground_mask,
    resize_gray,
    touched_at,
)
from adabldm_ref.models import load_models
from adabldm_ref.pipeline import (
    MaskSource,
    OkImage,
    Pipeline,
    ProceduralMasks,
    RealMasks,
    Sample,
    SamplePlan,
    plan_sample,
    prepare_ok_image,
    reference_pipeline,
    sized_to_foreground,
)

from .adaptation import BatchedAdapter, FastAdaptConfig
from .gate import GateConfig, attempt_base_seed
from .native import write_native_inputs
from .runtime import bundle_engines, engine_pipeline

log = logging.getLogger("adabldm")
FORMAT_VERSION = 1
EXIT_OK, EXIT_ERROR, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 3, 130
ADAPT_REGIONS = ("roi", "image")
DEFAULT_TEXTURES = ("brick", "gravel")  # shipped with scikit-image
SIDE_FOLDERS = ("extra", "runs")  # beside the category folder in the run root: no category's name


def category_name(object_name: str) -> str:
    """The category folder of an ``--object`` name: runs of characters other than letters,
    digits, '-', '_' and '.' become '_' ('metal nut' -> 'metal_nut', MVTec's name)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", object_name.strip()).strip("_.")
    if not name:
        raise ValueError(f"--object {object_name!r}: no letters or digits to name the category folder;"
                         " give --category NAME")
    return name


def check_category(category: str) -> str:
    """``category`` if it is a folder name anomalib can take as a category, else ValueError."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", category) or category in SIDE_FOLDERS:
        raise ValueError(
            f"--category {category!r}: expected a folder name of letters, digits, '-', '_', '.'"
            f" (starting with a letter or digit), not {' or '.join(SIDE_FOLDERS)}"
        )
    return category


def check_defect(defect: str) -> str:
    """``defect`` if it can name one folder (test/DEFECT, ground_truth/DEFECT and
    runs/DEFECT.json), else ValueError: '../x' wrote the run record and samples outside
    --out, and '' or '.' put the images straight into test/. Spaces are kept (a prompt word)."""
    if not defect or defect != defect.strip() or defect.startswith(".") or re.search(r"[/\\\x00-\x1f]", defect):
        raise ValueError(f"--defect {defect!r}: expected a folder name, not empty, without '/', '\\',"
                         " control characters, a leading '.' or surrounding spaces (e.g. broken_large)")
    return defect


def check_inputs_apart(out: Path, category: str, inputs: dict[str, Path | None]) -> None:
    """ValueError if an input folder (option name -> folder) is one the job writes into:
    the run root itself (its contact sheets became OK images of the next run, which then
    refused to resume), or inside the category, extra/ or runs/. A folder beside the
    outputs (--out data --images data/good) is fine: inputs are listed one level deep."""
    root = out.resolve()
    written = [root / category, root / "extra", root / "runs"]
    for option, folder in inputs.items():
        if folder is None:
            continue
        path = folder.resolve()
        if path == root or any(path.is_relative_to(w) for w in written):
            raise ValueError(f"{option} {folder} is inside what --out {out} writes: its outputs would mix with"
                             " the inputs; choose another --out (e.g. a new folder beside the inputs)")


@dataclass(frozen=True)
class JobConfig:
    out: Path
    num: int
    generation: GenerationConfig
    images: Path | None = None  # None: scikit-image textures
    foreground: Path | None = None  # masks with the images' file stems
    # Otsu foreground (generation.masks.foreground "otsu"): components smaller than this
    # fraction of the image are dropped (specks of lit background), the largest always kept.
    foreground_min_area: float = FOREGROUND_MIN_AREA
    masks: Path | None = None  # None: procedural masks
    procedural: tuple[str, ...] = ("blob", "scratch", "crack")
    model: str | None = None  # None: built-in tiny model
    controlnet: str | None = None
    allow_pickle: bool = False
    batch_size: int = 1
    device: str = "cpu"
    contact_rows: int = 16
    bundle: Path | None = None  # exported networks (adabldm-export); None: reference modules
    backend: str = "torch"  # with a bundle: "onnxruntime", "openvino" or "torch" (the reference modules)
    # On CUDA, replay each denoising step from one CUDA graph where the UNet+ControlNet
    # backend allows it (tensorrt, torch-cuda, torch-compile); False: the plain loop.
    cuda_graphs: bool = True
    # Online adaptation arithmetic: "fp32" (the reference) or "bf16" autocast (fp32 weights
    # and loss; measured 2.1x cheaper at SD-1.5 size on a CPU with native bf16, -0.05 dB).
    adapt_precision: Precision = Precision.FP32
    # Where adaptation runs (engine/adaptation.py, FastAdaptConfig.roi): "roi", the crop
    # around M widened by ``adapt_margin`` latent cells, the OK image beyond it (measured in
    # benchmarks/results/adaptation_cpu.md); "image": the whole image (the reference).
    adapt_region: str = "roi"
    adapt_margin: int = FastAdaptConfig.roi_margin
    # The category folder in ``out`` (anomalib's ``category``); None: the object name's.
    category: str | None = None
    # The quality gate (adabldm-run --gate): None, off (the bytes of the job without it).
    gate: GateConfig | None = None
    # adabldm-run --dump-noise: each written sample's inputs and noise tape for the native
    # runner in dump_noise/NNNN (engine/native.py); None: nothing dumped.
    dump_noise: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "category",
                           check_category(self.category or category_name(self.generation.object_name)))
        check_defect(self.generation.defect)
        check_inputs_apart(self.out, self.category,
                           {"--images": self.images, "--masks": self.masks, "--foreground": self.foreground})
        if self.num < 1:
            raise ValueError(f"--num {self.num}: expected at least 1 sample")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size {self.batch_size}: expected at least 1")
        if not 0 <= self.foreground_min_area < 1:
            raise ValueError(f"--foreground-min-area {self.foreground_min_area}: expected a fraction in [0, 1)")
        if self.backend != "torch" and self.bundle is None:
            raise ValueError(f"--backend {self.backend} runs exported networks: it needs --bundle DIR")
        if self.adapt_region not in ADAPT_REGIONS:
            raise ValueError(f"--adapt-region {self.adapt_region}: expected one of {', '.join(ADAPT_REGIONS)}")
        if self.adapt_margin < 0:
            raise ValueError(f"--adapt-margin {self.adapt_margin}: expected >= 0 latent cells")
        object.__setattr__(self, "adapt_precision",
                           Precision.of(self.adapt_precision, ADAPT_PRECISIONS, "--adapt-precision"))
        if self.foreground is not None and self.images is None:
            raise ValueError(
                f"--foreground {self.foreground}: needs --images (masks are named like the OK images)"
            )


@dataclass
class JobReport:
    out: Path
    total: int
    resumed: int = 0
    generated: int = 0
    skipped_inputs: list[str] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False
    quality: list[dict[str, float]] = field(default_factory=list)  # of the samples made now
    thin_resampled: list[int] = field(default_factory=list)  # defects resampled to stay >= 1 px wide
    regenerated: list[int] = field(default_factory=list)  # samples the gate made more than once
    gate_failed: list[int] = field(default_factory=list)  # samples kept although no attempt passed

    def count_gate(self, index: int, gate: dict | None) -> None:
        """Count a sample's gate record (the manifest's ``gate``) in the report."""
        if gate and len(gate["attempts"]) > 1:
            self.regenerated.append(index)
        if gate and not gate["passed"]:
            self.gate_failed.append(index)

    def finite_quality(self, key: str) -> list[float]:
        """The finite values of ``key`` (a PSNR is nan where a mask leaves no background)."""
        return [q[key] for q in self.quality if q.get(key) is not None and np.isfinite(q[key])]

    def mean_quality(self, key: str) -> float:
        values = self.finite_quality(key)
        return float(np.mean(values)) if values else float("nan")

    @property
    def error(self) -> str | None:
        """Why the run failed as a whole (no sample made, some tried), with what to change."""
        if self.interrupted or not self.failed or self.resumed + self.generated:
            return None
        first = min(self.failed)
        return (
            f"no sample could be made: all {len(self.failed)} failed (sample {first:04d}: {self.failed[first]});"
            " make the defects smaller (--scale-range, e.g. 0.3,0.6) or give masks that fit the objects"
            " (--masks DIR), or check the foreground (--foreground, --foreground-mode, --foreground-min-area)"
        )

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.error:
            return EXIT_ERROR
        return EXIT_PARTIAL if self.skipped_inputs or self.failed else EXIT_OK


@dataclass(frozen=True)
class Layout:
    out: Path  # the run root
    category: str  # the category folder in it: anomalib's MVTec tree, nothing else
    defect: str
    # The manifest this process appends to: one writer per file (a shard has its own,
    # engine/scaleout.py); all of them are read, merged, to know what is finished.
    manifest_name: str = "manifest.jsonl"

    @classmethod
    def of(cls, cfg: JobConfig, manifest_name: str = "manifest.jsonl") -> Layout:
        return cls(cfg.out, cfg.category, cfg.generation.defect, manifest_name)

    @property
    def category_dir(self) -> Path:
        return self.out / self.category

    def image(self, i: int) -> Path:
        return self.category_dir / "test" / self.defect / f"{i:04d}.png"

    def mask(self, i: int) -> Path:
        return self.category_dir / "ground_truth" / self.defect / f"{i:04d}_mask.png"

    def train_image(self, k: int) -> Path:
        """OK image ``k`` of the run (anomalib's normal training images)."""
        return self.train_dir / f"{k:03d}.png"

    @property
    def train_dir(self) -> Path:
        return self.category_dir / "train" / "good"

    def extra(self, i: int, kind: str) -> Path:
        return self.out / "extra" / self.defect / f"{i:04d}_{kind}.png"

    @property
    def manifest(self) -> Path:
        return self.out / self.manifest_name

    def manifests(self) -> list[Path]:
        """Every manifest in ``out``: manifest.jsonl and the shards' manifest.shard-K-of-N.jsonl."""
        return sorted(self.out.glob("manifest*.jsonl"))

    def relative(self, path: Path) -> str:
        """``path`` relative to the run root (as the manifest names files)."""
        return str(path.relative_to(self.out))

    @property
    def run_record(self) -> Path:
        """One record per defect type: a category folder holds several (MVTec layout)."""
        return self.out / "runs" / f"{self.defect}.json"

    def run_records(self) -> list[Path]:
        """The run records of every defect type in ``out``."""
        return sorted((self.out / "runs").glob("*.json"))

    @property
    def sheet(self) -> Path:
        return self.out / f"contact_sheet_{self.defect}.png"

    def complete(self, i: int) -> bool:
        return self.image(i).is_file() and self.mask(i).is_file()


# ---------------------------------------------------------------------------------------
# Inputs


def _foreground_for(image_path: Path, fg_files: Sequence[Path], shape: tuple[int, int]) -> np.ndarray:
    names = (image_path.stem, f"{image_path.stem}_mask")
    candidates = [p for p in fg_files if p.stem in names]
    if not candidates:
        folder = fg_files[0].parent
        raise InputError(f"{image_path}: no foreground mask named {names[0]}.* or {names[1]}.* in {folder}")
    fg = read_gray(candidates[0])
    if fg.shape != shape:
        raise InputError(
            f"foreground mask {candidates[0]} ({fg.shape[1]}x{fg.shape[0]}) does not match"
            f" image {image_path} ({shape[1]}x{shape[0]})"
        )
    return fg


# A real defect mask marking more than this fraction of its image is likely inverted
# (black defect on white): used as it is, its defect is nearly the whole image, silently.
INVERTED_AT = 0.5


def no_pixel_at_least(mask: np.ndarray, threshold: int) -> str:
    """Why a uint8 mask marks nothing at ``threshold``, with its largest value: a 0/1 mask
    (a common export) reads as empty, and 'no defect' alone left the user guessing."""
    peak = int(mask.max())
    hint = "; a 0/1 mask: scale it to 0/255" if peak == 1 else ""
    return f"no pixel >= {threshold} (largest value {peak}{hint}; expected 0 for none, 255 for marked)"


def load_ok_images(cfg: JobConfig, skipped: list[str]) -> list[OkImage]:
    """OK images at the working resolution; unreadable ones are reported and skipped."""
    res = cfg.generation.resolution
    if cfg.images is None:
        from skimage import data

        textures = [OkImage(f"skimage:{n}", prepare_ok_image(getattr(data, n)(), res)) for n in DEFAULT_TEXTURES]
        return [_with_foreground(ok, cfg) for ok in textures]
    paths = list_images(cfg.images, "OK image")
    fg_files = list_images(cfg.foreground, "foreground mask") if cfg.foreground is not None else []
    images = []
    for path in paths:
        try:
            array = read_image(path)
            _warn_if_squashed(path, array.shape[:2], res)
            fg = None
            if fg_files:
                fg_raw = _foreground_for(path, fg_files, array.shape[:2])
                fg = np.asarray(Image.fromarray(fg_raw).resize((res, res), Image.NEAREST)) >= 128
                if not fg.any():
                    why = (no_pixel_at_least(fg_raw, 128) if not (fg_raw >= 128).any()
                           else f"its foreground vanishes at {res} px")
                    raise InputError(f"foreground mask for {path} is empty ({why})")
            images.append(_with_foreground(OkImage(str(path), prepare_ok_image(array, res), fg), cfg))
        except InputError as exc:
            log.warning("skipped: %s", exc)
            skipped.append(str(exc))
    if not images:
        raise InputError(f"none of the OK images in {cfg.images} could be used")
    return images


SQUASH_WARN = 1.5  # aspect ratio past which resizing to a square visibly distorts defects


def _warn_if_squashed(path: Path, shape: tuple[int, int], res: int) -> None:
    """The image is resized to a square as it is: say so where that distorts it (a 2000 x
    100 strip came out squashed without a word), so the user can crop it first."""
    h, w = shape
    if max(h, w) / min(h, w) > SQUASH_WARN:
        log.warning("%s: %dx%d is squashed to %dx%d (aspect %.1f:1); crop it to square regions first"
                    " for undistorted defects", path, w, h, res, res, max(h, w) / min(h, w))


def _with_foreground(ok: OkImage, cfg: JobConfig) -> OkImage:
    """``ok`` with its Otsu foreground (small components dropped) when it has none and the
    mode asks for one; a full foreground stays implicit (None)."""
    if ok.foreground is not None or cfg.generation.masks.foreground == "full":
        return ok
    gray = np.asarray(Image.fromarray(ok.rgb).convert("L"))
    try:
        fg = foreground_mask(gray, cfg.generation.masks.foreground, cfg.foreground_min_area)
    except PlacementError as exc:
        raise InputError(f"{ok.name}: {exc}") from None
    return dataclasses.replace(ok, foreground=fg)


def mask_sources(images: Sequence[OkImage], masks: MaskSource, resolution: int) -> list[MaskSource]:
    """The mask source of each OK image: procedural masks drawn at the size of one of its
    foreground components (ProceduralMasks itself on a full foreground), real masks as given."""
    return [sized_to_foreground(masks, ok.foreground, resolution) for ok in images]


def load_mask_source(cfg: JobConfig, skipped: list[str]) -> MaskSource:
    if cfg.masks is None:
        return ProceduralMasks(tuple(cfg.procedural))
    masks = []
    threshold, res = cfg.generation.masks.binarize_at, cfg.generation.resolution
    for path in list_images(cfg.masks, "defect mask"):
        try:
            mask = read_gray(path)
            marked = mask >= threshold
            if not marked.any():
                raise InputError(f"defect mask {path} has {no_pixel_at_least(mask, threshold)}")
            if marked.mean() > INVERTED_AT:  # kept: an all-white mask is allowed
                log.warning("defect mask %s marks %.0f%% of its image as defect: if its defect is the"
                            " dark part, invert it (255 = defect)", path, 100 * marked.mean())
            if not (resize_gray(mask, res) >= threshold).any():
                # Thinner than a pixel at the resolution (a 2 px scratch of a 1024 px mask at
                # 256): each sample drawing it failed, naming no file. Masks that survive the
                # resize are kept as they are (their bytes are in the run key).
                mask = touched_at(marked, res)
                log.warning("defect mask %s: its defect is thinner than a pixel at %d px; resampled to"
                            " every pixel it touches", path, res)
            masks.append((str(path), mask))
        except InputError as exc:
            log.warning("skipped: %s", exc)
            skipped.append(str(exc))
    if not masks:
        raise InputError(f"none of the defect masks in {cfg.masks} could be used")
    return RealMasks(tuple(masks))


def inputs_digest(images: Sequence[OkImage], masks: MaskSource, sources: Sequence[MaskSource] = ()) -> str:
    h = hashlib.sha256()
    for ok in images:
        h.update(ok.name.encode())
        h.update(ok.rgb.tobytes())
        if ok.foreground is not None:
            h.update(ok.foreground.tobytes())
    if isinstance(masks, RealMasks):
        for name, m in masks.masks:
            h.update(name.encode())
            h.update(m.tobytes())
    else:
        h.update(repr(masks).encode())
    for source in sources:  # masks sized to the foreground: what they were sized to
        if source is not masks:
            h.update(repr(source).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Resume


def _read_record(path: Path) -> dict:
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable run record ({exc}); choose another --out") from None
    if not isinstance(old, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(old).__name__}; choose another --out")
    return old


def _differences(old, new, prefix: str = "") -> list[str]:
    """'key: OLD there, NEW now' for each leaf of two nested settings dicts that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(new) + [k for k in old if k not in new]
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    if old == new or (isinstance(old, list) and tuple(old) == new):  # JSON keeps tuples as lists
        return []
    return [f"{prefix[:-1]}: {old} there, {new} now"]


def _refusal(layout: Layout, old: dict, record: dict) -> InputError:
    """The other run in ``layout`` named by what differs, with both values."""
    diff = _differences(old.get("settings", {}), record["settings"])
    diff += _differences({k: old.get(k) for k in ("backend", "model_identity", "gate")},
                         {k: record.get(k) for k in ("backend", "model_identity", "gate")})
    if old.get("inputs") != record["inputs"]:
        diff.append(f"inputs: {', '.join(old.get('inputs') or [])} there, {', '.join(record['inputs'])} now")
    elif old.get("inputs_digest") != record["inputs_digest"]:
        diff.append("inputs: the same names, other pixels, foregrounds or defect masks"
                    f" (digest {old.get('inputs_digest')} there, {record['inputs_digest']} now)")
    if not diff:
        diff = [f"run key {old.get('run_key')} there, {record['run_key']} now"]
    return InputError(
        f"{layout.out} holds a run with other settings for defect {layout.defect!r}: {'; '.join(diff)};"
        f" choose another --out or --defect, or rerun with the settings of {layout.run_record} to resume it"
    )


def open_run(layout: Layout, record: dict, batch_size: int, images: Sequence[OkImage]) -> set[int]:
    """Check the folder belongs to this run and return the indices already finished.

    A folder of another run is refused, and so is another ``batch_size`` than its finished
    samples were made with (the bytes depend on it), another category than the run root
    holds, and other OK images than its ``train/good``; manifest lines whose files are
    missing, and a torn last line, are dropped (those samples are made again), and so are
    duplicate lines (one kept). Nothing is written before the checks pass; then the OK
    images ``images`` are written to ``train/good`` (where missing).
    """
    _check_category(layout)
    if layout.run_record.exists():
        old = _read_record(layout.run_record)
        if old.get("run_key") != record["run_key"]:
            raise _refusal(layout, old, record)
    reads = {path: _read_manifest(path, layout, record["run_key"]) for path in layout.manifests()}
    entries = {i: line for read in reads.values() for i, line in read.entries.items()}  # merged
    sizes = {b for read in reads.values() for b in read.sizes}
    own = reads.get(layout.manifest, _ManifestRead())  # the only one this process rewrites
    others, incomplete, duplicate = own.others, own.incomplete, own.duplicate
    if sizes - {batch_size}:
        made = ", ".join(f"--batch-size {b}" for b in sorted(sizes))
        raise InputError(
            f"--batch-size {batch_size}: the {len(entries)} finished sample(s) of defect {layout.defect!r} in"
            f" {layout.out} were made with {made}, and the images depend on it: rerun with {made} to resume,"
            " or choose another --out"
        )
    missing = _check_train_good(layout, images)  # after the run's own refusals: they say more
    if not layout.run_record.exists():
        layout.out.mkdir(parents=True, exist_ok=True)
        write_json(layout.run_record, record)
    for k in missing:
        write_png(layout.train_image(k), images[k].rgb)
    if incomplete:
        log.warning("manifest: dropped %d unreadable or incomplete line(s); those samples are made again", incomplete)
    if duplicate:
        log.warning("manifest: dropped %d duplicate line(s) (one line kept per sample)", duplicate)
    if incomplete or duplicate:
        kept = others + [own.entries[i] for i in sorted(own.entries)]
        write_text(layout.manifest, "".join(line + "\n" for line in kept))
    return set(entries)


def _check_category(layout: Layout) -> None:
    """Refuse a run root that holds another category (its run records name it)."""
    for path in layout.run_records():
        other = _read_record(path).get("category", layout.category)
        if other != layout.category:
            raise InputError(
                f"{layout.out} holds category {other!r} ({path}), not {layout.category!r}: one category per --out;"
                f" choose another --out, or --category {other} to add to it"
            )


def _check_train_good(layout: Layout, images: Sequence[OkImage]) -> list[int]:
    """The indices of ``images`` not yet in ``train/good``; InputError if the folder holds
    other images (a category has one set of OK images, whatever the defect type)."""
    present = {p.name for p in layout.train_dir.glob("*.png")} if layout.train_dir.is_dir() else set()
    wanted = {layout.train_image(k).name for k in range(len(images))}
    extra = sorted(present - wanted)
    if extra:
        raise InputError(f"{layout.train_dir} holds {len(extra)} OK image(s) more than this run's {len(images)}"
                         f" ({extra[0]}, ...): the category was made from other OK images; choose another --out")
    missing = []
    for k, ok in enumerate(images):
        path = layout.train_image(k)
        if path.name not in present:
            missing.append(k)
        elif not np.array_equal(_load_png(path), ok.rgb):
            raise InputError(f"{path} is not OK image {ok.name} of this run (at {ok.rgb.shape[1]} px): the category"
                             " was made from other OK images or another --resolution; choose another --out")
    return missing


@dataclass
class _ManifestRead:
    """One manifest file as read by open_run."""

    entries: dict[int, str] = field(default_factory=dict)  # index -> line of a complete sample of the run
    others: list[str] = field(default_factory=list)  # lines of another defect type of the category
    sizes: set[int] = field(default_factory=set)  # batch sizes of the entries
    incomplete: int = 0  # unreadable lines, another run's, or files missing
    duplicate: int = 0


def _read_manifest(path: Path, layout: Layout, run_key: str) -> _ManifestRead:
    """The lines of one manifest. A torn line (a run killed mid-write) is dropped, but a
    manifest*.jsonl of another tool is refused: rewritten without its lines, it was lost."""
    read = _ManifestRead()
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not an adabldm manifest (not text: {exc}); choose another --out") from None
    for n, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            read.incomplete += 1
            continue
        if not (isinstance(entry, dict) and {"index", "run_key", "image"} <= entry.keys()):
            raise InputError(f"{path} is not an adabldm manifest (line {n}: {line[:80]}): --out holds another"
                             " tool's file; choose another --out")
        try:
            i = int(entry["index"])
        except (ValueError, TypeError):
            read.incomplete += 1
            continue
        if entry.get("defect", layout.defect) != layout.defect:
            read.others.append(line)
        elif entry.get("run_key") != run_key or not layout.complete(i):
            read.incomplete += 1
        elif i in read.entries:
            read.duplicate += 1
        else:
            read.entries[i] = line
            if "batch_size" in entry:
                read.sizes.add(entry["batch_size"])
    return read


# ---------------------------------------------------------------------------------------
# Outputs


def write_sample(layout: Layout, sample: Sample, run_key: str, settings: dict, batch_size: int,
                 gate: dict | None = None) -> None:
    """Write one sample's files, then its manifest line (the commit point)."""
    append_line(layout.manifest, write_sample_files(layout, sample, run_key, settings, batch_size, gate))


def write_sample_files(layout: Layout, sample: Sample, run_key: str, settings: dict, batch_size: int,
                       gate: dict | None = None) -> str:
    """Write one sample's files (each atomically); return its manifest line, not yet written.

    ``gate``: the gate's record of the sample's attempts (:func:`gated`), None without one."""
    t0 = time.perf_counter()
    p, i = sample.plan, sample.plan.index
    write_png(layout.mask(i), sample.mask_uint8)
    write_png(layout.extra(i, "source"), p.rgb)
    write_png(layout.extra(i, "trimap"), p.trimap)
    write_png(layout.extra(i, "blended"), sample.blended)
    write_png(layout.image(i), sample.image)
    timings = {**sample.timings, "write_s": time.perf_counter() - t0}
    entry = {
        "category": layout.category,
        "defect": layout.defect,
        "index": i,
        "image": layout.relative(layout.image(i)),
        "mask": layout.relative(layout.mask(i)),
        "extra": {kind: layout.relative(layout.extra(i, kind)) for kind in ("source", "trimap", "blended")},
        "seed": p.seed,
        "source": p.source,
        "mask_source": p.mask_source,
        "placement": dataclasses.asdict(p.placement),
        "defect_pixels": int(p.mask.sum()),
        "batch_size": batch_size,
        "run_key": run_key,
        "settings": settings,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "quality": rounded(sample.quality),
    }
    if gate is not None:
        entry["gate"] = gate
    return json.dumps(entry, sort_keys=True, allow_nan=False)


def rounded(quality: dict[str, float]) -> dict[str, float | None]:
    """A sample's figures as the manifest keeps them (strict JSON)."""
    return {k: _finite(v) for k, v in quality.items()}


def with_quality(sample: Sample) -> Sample:
    """``sample`` with adabldm_core.metrics.sample_quality's figures added to its quality
    (beside the pipeline's bg_psnr_before / bg_psnr_after / adapt_loss_*)."""
    p = sample.plan
    sample.quality.update(sample_quality(p.rgb, sample.image, p.mask).as_dict())
    return sample


def _finite(value: float) -> float | None:
    """Rounded value, or None for nan / inf (e.g. the PSNR of an empty background), so
    the manifest stays strict JSON."""
    value = float(value)
    return round(value, 4) if np.isfinite(value) else None


def _load_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def write_contact_sheet(layout: Layout, rows: int) -> None:
    lines = [line for path in layout.manifests() for line in path.read_text().splitlines()]
    entries = [json.loads(line) for line in lines]
    indices = sorted({e["index"] for e in entries if e.get("defect", layout.defect) == layout.defect})
    tiles, names = [], []
    for i in indices[:rows]:
        paths = [layout.extra(i, "source"), layout.extra(i, "trimap"), layout.extra(i, "blended"),
                 layout.image(i), layout.mask(i)]
        try:
            tiles.append([_load_png(p) for p in paths])
            names.append(f"{i:04d}")
        except OSError as exc:  # a preview must not fail a finished run
            log.warning("contact sheet: sample %04d left out (%s)", i, exc)
    if tiles:
        labels = ("source", "trimap", "blended", "adapted", "mask")
        write_png(layout.sheet, contact_sheet(tiles, labels, names))


# ---------------------------------------------------------------------------------------
# The job


def run_job(cfg: JobConfig, progress: bool = True, shard=None) -> JobReport:
    """Generate samples 0..num-1 into ``cfg.out`` (skipping finished ones); with ``shard``
    (an ``adabldm_engine.scaleout.Shard``) only that shard's chunks, into its own manifest.

    The folder is locked for the run (a shard locks its own part): a second run on it is
    refused (naming this one) instead of making every sample a second time."""
    with folder_lock(cfg.out, *([shard.lock_name] if shard else [])):
        return _run_locked(cfg, progress, shard)


def _run_locked(cfg: JobConfig, progress: bool, shard=None) -> JobReport:
    report = JobReport(cfg.out, cfg.num)
    images = load_ok_images(cfg, report.skipped_inputs)
    masks = load_mask_source(cfg, report.skipped_inputs)
    pipeline, identity = make_pipeline(cfg)
    with pipeline:  # engines are released on every exit path
        return _generate(cfg, pipeline, identity, images, masks, report, progress, shard)


def chunks_of(num: int, batch_size: int) -> list[range]:
    """The fixed chunks of ``batch_size`` consecutive indices of 0..num-1 (the last one shorter)."""
    return [range(start, min(start + batch_size, num)) for start in range(0, num, batch_size)]


def run_record(cfg: JobConfig, identity: str, images: Sequence[OkImage], masks: MaskSource,
               sources: Sequence[MaskSource]) -> dict:
    """The run record (runs/{defect}.json) with its run key: what the bytes depend on."""
    gen = cfg.generation
    record = {
        "format_version": FORMAT_VERSION,
        "settings_hash": gen.digest(),
        "settings": gen.to_dict(),
        "model": cfg.model or "tiny",
        "controlnet": cfg.controlnet,
        "model_identity": identity,
        "backend": backend_name(cfg),
        "bundle": str(cfg.bundle) if cfg.bundle else None,
        "inputs_digest": inputs_digest(images, masks, sources),
        "inputs": [ok.name for ok in images],
        "category": cfg.category,
        "gate": cfg.gate.to_dict() if cfg.gate else None,
    }
    key_src = ":".join(record[k] for k in ("settings_hash", "model_identity", "backend", "inputs_digest"))
    if cfg.gate:  # a gated run has other bytes where a sample was made again; off: the key as before
        key_src += ":gate:" + json.dumps(record["gate"], sort_keys=True)
    record["run_key"] = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    return record


def _generate(cfg: JobConfig, pipeline: Pipeline, identity: str, images: Sequence[OkImage], masks: MaskSource,
              report: JobReport, progress: bool, shard=None) -> JobReport:
    gen = cfg.generation
    settings = gen.to_dict()
    sources = mask_sources(images, masks, gen.resolution)
    record = run_record(cfg, identity, images, masks, sources)
    run_key = record["run_key"]
    layout = Layout.of(cfg, shard.manifest_name if shard else "manifest.jsonl")
    done = open_run(layout, record, cfg.batch_size, images)
    chunks = shard.chunks(cfg.num, cfg.batch_size) if shard else chunks_of(cfg.num, cfg.batch_size)
    report.total = sum(len(chunk) for chunk in chunks)
    report.resumed = len(done & {i for chunk in chunks for i in chunk})

    with sample_progress(report, report.total, progress, lambda: write_contact_sheet(layout, cfg.contact_rows)) as bar:
        for chunk in chunks:
            todo = [i for i in chunk if i not in done]
            if not todo:
                continue
            plans = _plan_chunk(chunk, gen, images, sources, report)
            bar.update(sum(i in report.failed for i in todo))  # failed samples are done too
            todo = [i for i in todo if i not in report.failed]
            if not todo:
                continue
            steps = gen.sampler.steps
            bar.set_postfix_str(f"diffusion {todo[0]:04d}..")
            samples = pipeline.run(
                plans,
                finish=lambda p: p.index in todo,
                callback=lambda s: bar.set_postfix_str(f"diffusion step {s + 1}/{steps}"),
            )
            for sample in samples:
                sample, gate = gated(cfg, pipeline, with_quality(sample), images, sources, bar.set_postfix_str)
                write_sample(layout, sample, run_key, settings, cfg.batch_size, gate)
                if cfg.dump_noise is not None:  # the kept attempt's inputs, for adabldm-native
                    write_native_inputs(cfg.dump_noise / f"{sample.plan.index:04d}", sample.plan, gen,
                                        pipeline.denoiser.embeddings, identity)
                report.count_gate(sample.plan.index, gate)
                report.generated += 1
                report.quality.append(sample.quality)
                if sample.plan.placement.thin_resampled:
                    report.thin_resampled.append(sample.plan.index)
                bar.update(1)
    return report


def gated(cfg: JobConfig, pipeline: Pipeline, first: Sample, images: Sequence[OkImage],
          sources: Sequence[MaskSource], note=lambda text: None) -> tuple[Sample, dict | None]:
    """The sample to keep and the gate's record of its attempts (None without a gate).

    ``first`` (with its figures, :func:`with_quality`) is attempt 0. While an attempt fails
    ``cfg.gate``, attempt a (1, 2, ...) is made alone (a batch of one) as sample i of a run
    seeded ``attempt_base_seed(seed, i, a)``: a new mask draw and new noise, depending on
    (seed, i, a) only. The first passing attempt is kept, else the last one made, flagged
    (``passed`` false). ``note`` gets a progress text."""
    gate = cfg.gate
    if gate is None:
        return first, None
    i, gen = first.plan.index, cfg.generation
    kept, kept_at, failed = first, 0, gate.failures(first.quality)
    attempts = [_attempt(0, first, failed)]
    for a in range(1, gate.max_attempts):
        if not failed:
            break
        note(f"gate: sample {i:04d} attempt {a + 1}/{gate.max_attempts} ({failed[0]})")
        try:
            plan = plan_sample(i, dataclasses.replace(gen, seed=attempt_base_seed(gen.seed, i, a)), images,
                               sources[i % len(sources)])
        except PlacementError as exc:
            attempts.append({"attempt": a, "error": str(exc)})
            continue
        (sample,) = pipeline.run([plan])
        kept, kept_at, failed = with_quality(sample), a, gate.failures(sample.quality)
        attempts.append(_attempt(a, kept, failed))
    if failed:
        log.warning("sample %04d: no attempt of %d passed the gate (%s); the last one kept, flagged",
                    i, gate.max_attempts, "; ".join(failed))
    return kept, {"passed": not failed, "kept": kept_at, "attempts": attempts}


def _attempt(a: int, sample: Sample, failed: list[str]) -> dict:
    return {"attempt": a, "seed": sample.plan.seed, "mask_source": sample.plan.mask_source,
            "quality": rounded(sample.quality), "failed": failed}


@contextmanager
def sample_progress(report: JobReport, total: int, progress: bool, on_exit=lambda: None) -> Iterator[tqdm]:
    """The progress bar of a job's samples; Ctrl-C inside marks ``report`` interrupted (what
    is finished stays), and ``on_exit`` runs on every way out (e.g. the contact sheet)."""
    bar = tqdm(total=total, initial=report.resumed, unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        yield bar
    except KeyboardInterrupt:
        report.interrupted = True
        log.warning("interrupted: finished samples are kept; rerun the same command to resume")
    finally:
        bar.close()
        on_exit()


def backend_name(cfg: JobConfig) -> str:
    """'reference' (modules, no bundle) or the bundle backend, '+adapt-bf16' when adaptation
    runs in bf16, '+adapt-roiM' on a region of interest with margin M ('+adapt-bf16-roiM'
    both): part of the run key (they change the images)."""
    name = "reference" if cfg.bundle is None else cfg.backend
    adapt = ([str(cfg.adapt_precision)] if cfg.adapt_precision != "fp32" else []) + (
        [f"roi{cfg.adapt_margin}"] if cfg.adapt_region == "roi" else [])
    return name + ("+adapt-" + "-".join(adapt) if adapt else "")


def make_pipeline(cfg: JobConfig) -> tuple[Pipeline, str]:
    """The pipeline of the job and the identity (weights hash) of its model.

    Each part is chosen once here: the networks (reference modules, or a bundle's engines
    on a backend), the step (diffusers' scheduler step; the static-buffer step on CUDA),
    the adapter (the reference loop, or the batched one for engines and bf16)."""
    gen, device = cfg.generation, cfg.device
    on_gpu = torch.device(device).type == "cuda"
    bf16 = cfg.adapt_precision is Precision.BF16
    # bf16 on a GPU: tensor-core convolutions want NHWC (on the CPU channels-last gained nothing with bf16)
    roi = cfg.adapt_region == "roi"
    fast = FastAdaptConfig(precision=cfg.adapt_precision, channels_last=bf16 and on_gpu, roi=roi,
                           roi_margin=cfg.adapt_margin, roi_feather=min(FastAdaptConfig.roi_feather, LATENT_STRIDE * cfg.adapt_margin))
    if bf16 and not on_gpu and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("--adapt-precision bf16 on a CPU without native bfloat16: emulated, likely slower than fp32")
    if cfg.bundle is None:
        models = load_models(cfg.model, cfg.controlnet, cfg.allow_pickle, defect=gen.defect)
        identity = models.identity()
        _to_device(models, device)
        adapter = BatchedAdapter(models.vae, gen.adapt, fast, models.latent_scale) if bf16 or roi else None
        return reference_pipeline(models, gen, device, adapter), identity
    bundle = Bundle.open(cfg.bundle)
    bundle.check(resolution=gen.resolution)
    wants_modules = cfg.backend == "torch" or cfg.model is not None  # to run, or to check the bundle against
    models = load_models(cfg.model, cfg.controlnet, cfg.allow_pickle, defect=gen.defect) if wants_modules else None
    if cfg.backend == "torch":  # the other backends run the bundle's graphs or their own copies
        _to_device(models, device)
    engines = bundle_engines(bundle, cfg.backend, device, models)  # checks the models' identity
    vae = bundle.adapt_vae().to(device)
    static = on_gpu and cfg.cuda_graphs  # static-buffer step, graphed if the backend allows
    pipeline = engine_pipeline(engines, bundle.tokenizer(), vae, bundle.manifest["latent_scale"], gen, device,
                               fast, static_step=static)
    return pipeline, bundle.identity


def _to_device(models, device: str) -> None:
    for module in models.modules().values():
        module.to(device)


def _plan_chunk(chunk, gen, images, sources, report: JobReport) -> list[SamplePlan]:
    """Plans of the chunk's samples, sample i drawing its mask from ``sources[i % len]``
    (the source of its OK image); failures are recorded in ``report``."""
    plans = []
    for i in chunk:
        try:
            plans.append(plan_sample(i, gen, images, sources[i % len(sources)]))
        except PlacementError as exc:
            report.failed[i] = str(exc)
            log.warning("sample %04d skipped: %s", i, exc)
    return plans
