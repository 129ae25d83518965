"""Reading a bulk job's output (adabldm-run --batch --out OUT) back: one record per sample.

Two layouts are read. Today's: ``OUT/<category>/{train/good,test/<defect>,ground_truth/<defect>}``
(the tree anomalib loads) with ``manifest*.jsonl``, ``extra/`` and the sheets beside the
category. The earlier one: ``OUT`` is the category folder itself, holding ``test/``,
``ground_truth/``, ``extra/<defect>/NNNN_source.png`` and ``manifest*.jsonl``. ``OUT`` may
also be the category folder of today's layout (the manifests are then one folder up).
Each manifest line names its image and mask relative to the manifest's folder or to the
category folder; the source is the file its ``extra.source`` names, else the
``extra/<defect>/NNNN_source.png`` of the same sample. Without any manifest,
``test/<defect>`` and ``ground_truth/<defect>`` are paired by name (no sources, no figures).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adabldm_core.io import InputError

from adabldm_ref.fewshot import pair_files


@dataclass(frozen=True)
class SyntheticSample:
    defect: str
    index: int
    image: Path
    mask: Path
    source: Path | None  # the OK image it was made from (working resolution), if found
    quality: dict | None  # the manifest's "quality", if any
    mask_source: str | None  # the real mask file (or "procedural:kind") the mask came from


def manifests_of(out: Path) -> list[Path]:
    """manifest*.jsonl in ``out``, else in its parent (``out`` is today's category folder)."""
    for folder in (out, out.parent):
        found = sorted(folder.glob("manifest*.jsonl"))
        if found:
            return found
    return []


def _first(candidates) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _folders(base: Path) -> list[Path]:
    """``base`` and its sub-folders (a category folder of today's layout is one of them)."""
    return [base, *sorted(p for p in base.iterdir() if p.is_dir())]


def _entry(line: str, path: Path, n: int) -> dict:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} line {n}: not JSON ({exc})") from None
    for key in ("defect", "index", "image", "mask"):
        if key not in entry:
            raise InputError(f"{path} line {n}: no {key!r}: expected an adabldm-run manifest line")
    return entry


def _from_manifests(paths: list[Path]) -> list[SyntheticSample]:
    samples: dict[tuple[str, int], SyntheticSample] = {}
    base = paths[0].parent
    folders = _folders(base)
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            e = _entry(line, path, n)
            image = _first(f / e["image"] for f in folders)
            mask = _first(f / e["mask"] for f in folders)
            if image is None or mask is None:
                missing = " and ".join(f"its {k} {e[k]}" for k, p in (("image", image), ("mask", mask)) if p is None)
                raise InputError(f"{path} line {n}: {missing} not found under {base} or its category folder"
                                 " (a moved or partly copied output?)")
            stem = Path(e["image"]).stem
            named = (e.get("extra") or {}).get("source") if isinstance(e.get("extra"), dict) else None
            source = _first([*([base / named] if named else []),
                             *(f / "extra" / e["defect"] / f"{stem}_source.png" for f in [*folders, base.parent])])
            samples[(e["defect"], int(e["index"]))] = SyntheticSample(
                e["defect"], int(e["index"]), image, mask, source, e.get("quality"), e.get("mask_source"))
    return [samples[k] for k in sorted(samples)]


def _from_folders(out: Path, defect: str) -> list[SyntheticSample]:
    for cat in _folders(out):
        images, masks = cat / "test" / defect, cat / "ground_truth" / defect
        if images.is_dir() and masks.is_dir():
            return [SyntheticSample(defect, i, f.image, f.mask, None, None, None)
                    for i, f in enumerate(pair_files(images, masks))]
    return []


def read_synthetic(out: str | Path, defect: str | None = None) -> list[SyntheticSample]:
    """The samples of a bulk job's output (of ``defect`` only, if given), in (defect, index)
    order; an InputError names what is missing."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"synthetic set {out}: not a folder (expected an adabldm-run --out folder)")
    paths = manifests_of(out)
    if paths:
        samples = _from_manifests(paths)
    elif defect is not None:
        samples = _from_folders(out, defect)
        if not samples:  # say what was looked for, not just "no samples"
            raise InputError(f"synthetic set {out}: no manifest*.jsonl, and no test/{defect} beside a"
                             f" ground_truth/{defect} in it or in a category folder under it (expected an"
                             " adabldm-run --out folder or an MVTec-layout category)")
    else:
        raise InputError(f"synthetic set {out}: no manifest*.jsonl in it or its parent (expected an adabldm-run"
                         " --out folder)")
    if defect is not None:
        found = sorted({s.defect for s in samples})
        samples = [s for s in samples if s.defect == defect]
        if not samples:
            has = f"it has {', '.join(found)}" if found else "it has no samples"
            raise InputError(f"synthetic set {out} has no samples of defect {defect!r} ({has})")
    if not samples:
        raise InputError(f"synthetic set {out} has no samples")
    return samples
