"""The run root's layout as anomalib reads it: MVTecAD(root=OUT, category=C) and Folder.

anomalib needs torchvision, which does not import beside the CPU torch of this project's
environment, so its readers' documented rules are re-implemented here, from anomalib's
source (open-edge-platform/anomalib, src/anomalib/data/datasets/image/mvtecad.py
``make_mvtec_ad_dataset`` and folder.py ``make_folder_dataset``, read at commit b72336861):

- MVTecAD globs every ``.png``/``.PNG`` under ``root/category`` recursively and takes the
  last three parts of each path as split / label / file; label ``good`` is normal, any
  other label anomalous; the ``ground_truth`` split's files are masks, sorted by path, and
  assigned in that order to the anomalous ``test`` images, sorted by path; each image's
  stem must be in its mask's stem.
- Folder globs each given directory recursively (case-insensitive image extensions),
  sorts everything by path and pairs the abnormal images with the mask files in that
  order, with the same stem rule.
With anomalib importable, the last test also loads the layout with anomalib itself.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from adabldm_core.io import InputError, read_image
from adabldm_engine.job import EXIT_OK, category_name, check_category, run_job

from .conftest import CATEGORY, NUM

MVTEC_EXTENSIONS = (".png", ".PNG")  # anomalib mvtecad.IMG_EXTENSIONS
FOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


class LayoutError(AssertionError):
    """Where anomalib's reader would fail or mislabel a file."""


def mvtec_samples(root: Path, category: str) -> list[dict]:
    """anomalib's make_mvtec_ad_dataset(root / category): one dict per image (masks paired)."""
    base = root / category
    files = [f for f in base.glob("**/*") if f.suffix in MVTEC_EXTENSIONS]
    if not files:
        raise LayoutError(f"Found 0 images in {base}")
    rows = []
    for f in files:
        split, label, name = f.parts[-3:]
        path = base / split / label / name  # anomalib rebuilds the path from the three parts
        if path != f:
            raise LayoutError(f"{f.relative_to(base)}: not split/label/file (anomalib reads it as {split}/{label}/{name})")
        rows.append({"split": split, "label": label, "image_path": str(path), "label_index": int(label != "good")})
    masks = sorted((r for r in rows if r["split"] == "ground_truth"), key=lambda r: r["image_path"])
    samples = sorted((r for r in rows if r["split"] != "ground_truth"), key=lambda r: r["image_path"])
    abnormal_test = [r for r in samples if r["split"] == "test" and r["label_index"] == 1]
    if len(abnormal_test) != len(masks):  # pandas refuses to assign arrays of another length
        raise LayoutError(f"{len(abnormal_test)} anomalous test images, {len(masks)} masks")
    for r, m in zip(abnormal_test, masks):
        r["mask_path"] = m["image_path"]
    for r in samples:
        if r["label_index"] == 1 and Path(r["image_path"]).stem not in Path(r.get("mask_path") or "").stem:
            raise LayoutError(f"mismatch between anomalous image {r['image_path']} and mask {r.get('mask_path')}")
    return samples


def folder_samples(root: Path, normal_dir: str, abnormal_dirs: list[str], mask_dirs: list[str]) -> list[dict]:
    """anomalib's make_folder_dataset(normal_dir, root, abnormal_dir, mask_dir=...)."""

    def files(folder: str, label: str) -> list[dict]:
        found = [f for f in (root / folder).glob("**/*") if f.suffix.lower() in FOLDER_EXTENSIONS and not f.is_dir()]
        if not found:
            raise LayoutError(f"Found 0 {label} images in {root / folder}")
        return [{"image_path": str(f), "label": label} for f in found]

    rows = files(normal_dir, "normal") + [r for d in abnormal_dirs for r in files(d, "abnormal")]
    rows += [r for d in mask_dirs for r in files(d, "mask_dir")]
    rows.sort(key=lambda r: r["image_path"])
    abnormal = [r for r in rows if r["label"] == "abnormal"]
    masks = [r for r in rows if r["label"] == "mask_dir"]
    if len(abnormal) != len(masks):
        raise LayoutError(f"{len(abnormal)} abnormal images, {len(masks)} masks")
    for r, m in zip(abnormal, masks):
        if Path(r["image_path"]).stem not in Path(m["image_path"]).stem:
            raise LayoutError(f"mismatch between abnormal image {r['image_path']} and mask {m['image_path']}")
        r["mask_path"] = m["image_path"]
    return [r for r in rows if r["label"] != "mask_dir"]


@pytest.fixture(scope="module")
def two_defects(reference_run, tmp_path_factory):
    """The reference run's root with a second defect type ('scratch', 2 samples) added."""
    import shutil

    from adabldm_engine.job import JobConfig

    from .conftest import tiny_generation, torch_threads

    out = tmp_path_factory.mktemp("two_defects") / "out"
    shutil.copytree(reference_run[0], out)
    with torch_threads(1):
        report = run_job(JobConfig(out=out, num=2, generation=tiny_generation(defect="scratch")), progress=False)
    assert report.exit_code == EXIT_OK
    return out


def test_only_anomalibs_tree_is_inside_the_category(reference_run):
    out, _ = reference_run
    inside = sorted(str(p.relative_to(out / CATEGORY)) for p in (out / CATEGORY).rglob("*") if p.is_file())
    assert inside == sorted(["train/good/000.png", "train/good/001.png"]
                            + [f"test/defect/{i:04d}.png" for i in range(NUM)]
                            + [f"ground_truth/defect/{i:04d}_mask.png" for i in range(NUM)])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["texture", "extra", "runs", "manifest.jsonl", "contact_sheet_defect.png"])  # the lock is gone


def test_train_good_holds_the_ok_images_at_the_run_resolution(reference_run):
    from skimage import data

    from adabldm_ref.pipeline import prepare_ok_image

    out, _ = reference_run
    for k, name in enumerate(("brick", "gravel")):  # the default inputs, in order
        image = read_image(out / CATEGORY / "train" / "good" / f"{k:03d}.png")
        assert image.shape == (64, 64, 3)
        assert np.array_equal(image, prepare_ok_image(getattr(data, name)(), 64))


def test_mvtec_rules_load_the_run_with_every_mask_paired(two_defects):
    samples = mvtec_samples(two_defects, CATEGORY)
    train = [s for s in samples if s["split"] == "train"]
    test = [s for s in samples if s["split"] == "test"]
    assert [(s["label"], s["label_index"]) for s in train] == [("good", 0)] * 2
    assert sorted(Path(s["image_path"]).relative_to(two_defects).as_posix() for s in test) == (
        [f"texture/test/defect/{i:04d}.png" for i in range(NUM)] + ["texture/test/scratch/0000.png",
                                                                   "texture/test/scratch/0001.png"])
    for s in test:  # the mask of each image is the one the manifest names
        assert Path(s["mask_path"]).parent.name == Path(s["image_path"]).parent.name
        assert Path(s["mask_path"]).name == Path(s["image_path"]).stem + "_mask.png"
    lines = [json.loads(line) for line in (two_defects / "manifest.jsonl").read_text().splitlines()]
    named = {str(two_defects / e["image"]): str(two_defects / e["mask"]) for e in lines}
    assert named == {s["image_path"]: s["mask_path"] for s in test}


def test_folder_rules_load_the_run(two_defects):
    root = two_defects / CATEGORY
    samples = folder_samples(root, "train/good", ["test/defect", "test/scratch"],
                             ["ground_truth/defect", "ground_truth/scratch"])
    assert sum(s["label"] == "normal" for s in samples) == 2
    abnormal = [s for s in samples if s["label"] == "abnormal"]
    assert len(abnormal) == NUM + 2
    assert all(Path(s["mask_path"]).stem == Path(s["image_path"]).stem + "_mask" for s in abnormal)


def test_the_rules_refuse_what_the_old_layout_had_in_the_category(reference_run, copy_of):
    """The checks have teeth: extras and a sheet inside the category break anomalib's reader."""
    out = copy_of(reference_run[0])
    extra = out / CATEGORY / "extra" / "defect"
    extra.mkdir(parents=True)
    (out / "extra" / "defect" / "0000_source.png").rename(extra / "0000_source.png")
    with pytest.raises(LayoutError, match="anomalous image .*/extra/defect/0000_source.png and mask None"):
        mvtec_samples(out, CATEGORY)
    (extra / "0000_source.png").unlink()
    (out / "contact_sheet_defect.png").rename(out / CATEGORY / "contact_sheet_defect.png")
    with pytest.raises(LayoutError, match="not split/label/file"):
        mvtec_samples(out, CATEGORY)


def test_the_run_loads_in_anomalib_itself(two_defects):
    pytest.importorskip("torchvision", reason="anomalib needs torchvision (not installable beside this torch)")
    datasets = pytest.importorskip("anomalib.data.datasets", reason="anomalib is not installed")
    test = datasets.MVTecADDataset(root=two_defects, category=CATEGORY, split="test")
    assert len(test) == NUM + 2 and test.samples.attrs["task"] == "segmentation"
    train = datasets.MVTecADDataset(root=two_defects, category=CATEGORY, split="train")
    assert len(train) == 2
    folder = datasets.FolderDataset(name="synthetic", root=two_defects / CATEGORY, normal_dir="train/good",
                                    abnormal_dir=["test/defect", "test/scratch"],
                                    mask_dir=["ground_truth/defect", "ground_truth/scratch"], split="test")
    assert len(folder) == NUM + 2


# ---------------------------------------------------------------------------------------
# The category


def test_category_name_of_an_object():
    assert category_name("metal nut") == "metal_nut"
    assert category_name(" bottle ") == "bottle" and category_name("PCB-1.v2") == "PCB-1.v2"
    with pytest.raises(ValueError, match=r"--object '\?\?': no letters or digits .* give --category"):
        category_name("??")
    for bad in ("extra", "runs", "a/b", ".hidden", ""):
        with pytest.raises(ValueError, match="--category"):
            check_category(bad)


def test_another_category_in_the_same_out_is_refused(reference_run, copy_of, job_config):
    out = copy_of(reference_run[0])
    before = (out / "manifest.jsonl").read_bytes()
    cfg = job_config(out, num=1, defect="scratch", object_name="bottle")
    with pytest.raises(InputError, match="holds category 'texture'.*not 'bottle': one category per --out"):
        run_job(cfg, progress=False)
    assert (out / "manifest.jsonl").read_bytes() == before and not (out / "bottle").exists()


def test_other_ok_images_for_the_same_category_are_refused(reference_run, copy_of, job_config, make_image, tmp_path):
    out = copy_of(reference_run[0])
    images = tmp_path / "images"
    make_image(images / "a.png", 64, 64)
    with pytest.raises(InputError, match=r"train/good holds 1 OK image\(s\) more than this run's 1"):
        run_job(job_config(out, num=1, defect="scratch", images=images), progress=False)
    make_image(images / "b.png", 64, 64, seed=1)
    with pytest.raises(InputError, match=r"train/good/000.png is not OK image .*a.png of this run"):
        run_job(job_config(out, num=1, defect="scratch", images=images), progress=False)
    assert not (out / "runs" / "scratch.json").exists()  # nothing written
