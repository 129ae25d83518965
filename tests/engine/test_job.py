"""adabldm_engine.job: the MVTec layout, determinism, resume after a kill, bad inputs."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import adabldm_engine.job as job
import numpy as np
import pytest
from adabldm_core.io import LOCK_NAME, InputError, folder_lock, read_gray, read_image
from adabldm_engine.job import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, run_job
from PIL import Image

from .conftest import CATEGORY


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def strict_json(line: str) -> dict:
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant} in the manifest")

    return json.loads(line, parse_constant=refuse)


def interrupt_after(monkeypatch, name: str, calls: int) -> None:
    """Let ``job.<name>`` run ``calls`` times, then raise KeyboardInterrupt (a Ctrl-C)."""
    real, count = getattr(job, name), [0]

    def wrapper(*args, **kwargs):
        if count[0] == calls:
            raise KeyboardInterrupt
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(job, name, wrapper)


# ---------------------------------------------------------------------------------------
# End to end


def test_layout_of_a_run(reference_run):
    out, report = reference_run
    n = report.total
    assert (report.generated, report.resumed, report.exit_code) == (n, 0, EXIT_OK)
    assert not report.skipped_inputs and not report.failed and not report.interrupted
    assert sorted(p.name for p in (out / CATEGORY / "test" / "defect").iterdir()) == [f"{i:04d}.png" for i in range(n)]
    masks = sorted((out / CATEGORY / "ground_truth" / "defect").iterdir())
    assert [p.name for p in masks] == [f"{i:04d}_mask.png" for i in range(n)]
    for i, path in enumerate(masks):
        image, mask = read_image(out / CATEGORY / "test" / "defect" / f"{i:04d}.png"), read_gray(path)
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask)) == {0, 255}  # binary and non-empty (and not all defect here)
    extras = sorted(p.name for p in (out / "extra" / "defect").iterdir())
    assert extras == sorted(f"{i:04d}_{k}.png" for i in range(n) for k in ("source", "blended", "trimap"))
    assert not list(out.rglob("*.tmp"))


def test_manifest_lines(reference_run):
    out, report = reference_run
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == report.total
    entries = [strict_json(line) for line in lines]
    assert [e["index"] for e in entries] == list(range(report.total))
    for e in entries:
        for key in ("index", "seed", "source", "mask_source", "placement", "settings", "timings", "quality"):
            assert key in e, key
        assert e["source"] in ("skimage:brick", "skimage:gravel")
        assert e["mask_source"].startswith("procedural:")
        assert {"top", "left", "height", "width", "angle", "scale"} <= set(e["placement"])
        assert e["settings"]["sampler"]["steps"] == 4 and e["settings"]["resolution"] == 64
        assert e["timings"]["diffusion_s"] > 0 and e["timings"]["adapt_s"] > 0
        assert np.isfinite(e["quality"]["bg_psnr_before"]) and np.isfinite(e["quality"]["bg_psnr_after"])
        mask = read_gray(out / e["mask"])
        assert e["defect_pixels"] == int((mask == 255).sum()) > 0
    assert len({e["seed"] for e in entries}) == report.total  # a seed per sample


def test_contact_sheet_and_run_record(reference_run):
    out, report = reference_run
    with Image.open(out / "contact_sheet_defect.png") as sheet:
        assert sheet.format == "PNG" and sheet.mode == "RGB"
        assert sheet.height > report.total * 100 and sheet.width > 5 * 100  # a row per sample, 5 tiles
    record = json.loads((out / "runs" / "defect.json").read_text())
    assert record["run_key"] == manifest(out)[0]["run_key"]
    assert record["settings"]["sampler"]["steps"] == 4
    assert record["inputs"] == ["skimage:brick", "skimage:gravel"]


def test_same_settings_give_identical_bytes(reference_run, tmp_path, job_config, sample_files):
    out, report = reference_run
    again = run_job(job_config(tmp_path / "b", num=report.total), progress=False)
    assert again.exit_code == EXIT_OK
    assert sample_files(tmp_path / "b") == sample_files(out)
    assert len(sample_files(out)) == 2 * report.total


# ---------------------------------------------------------------------------------------
# Resume


def test_resume_after_interrupt_matches_uninterrupted_run(
    reference_run, tmp_path, job_config, monkeypatch, sample_files
):
    ref_out, ref = reference_run
    out = tmp_path / "b"
    interrupt_after(monkeypatch, "write_sample", calls=1)
    report = run_job(job_config(out, num=ref.total), progress=False)
    assert report.interrupted and report.exit_code == EXIT_INTERRUPTED == 130
    assert report.generated == 1 and len(manifest(out)) == 1
    assert (out / "contact_sheet_defect.png").is_file()  # the finished sample is previewed anyway
    monkeypatch.undo()

    rerun = run_job(job_config(out, num=ref.total), progress=False)
    assert (rerun.resumed, rerun.generated, rerun.exit_code) == (1, ref.total - 1, EXIT_OK)
    assert sample_files(out) == sample_files(ref_out)
    indices = [e["index"] for e in manifest(out)]
    assert sorted(indices) == list(range(ref.total)) and len(set(indices)) == len(indices)


def test_kill_between_files_and_manifest_line(reference_run, tmp_path, job_config, monkeypatch, sample_files):
    """Files of sample 1 written, its manifest line not: sample 1 is made again."""
    ref_out, ref = reference_run
    out = tmp_path / "b"
    interrupt_after(monkeypatch, "append_line", calls=1)
    report = run_job(job_config(out, num=ref.total), progress=False)
    assert report.interrupted and len(manifest(out)) == 1
    assert (out / CATEGORY / "test" / "defect" / "0001.png").exists()  # orphan files without a line
    monkeypatch.undo()

    rerun = run_job(job_config(out, num=ref.total), progress=False)
    assert (rerun.resumed, rerun.generated) == (1, ref.total - 1)
    assert sample_files(out) == sample_files(ref_out)
    assert [e["index"] for e in manifest(out)] == list(range(ref.total))


def test_torn_last_manifest_line_is_dropped(reference_run, copy_of, job_config, sample_files, caplog):
    ref_out, ref = reference_run
    out = copy_of(ref_out)
    text = (out / "manifest.jsonl").read_text()
    last_start = text.rstrip("\n").rfind("\n") + 1
    (out / "manifest.jsonl").write_text(text[: last_start + 40])  # killed mid-line
    (out / CATEGORY / "test" / "defect" / f"{ref.total - 1:04d}.png").write_bytes(b"half-written")

    with caplog.at_level(logging.WARNING, logger="adabldm"):
        rerun = run_job(job_config(out, num=ref.total), progress=False)
    assert "manifest: dropped 1 unreadable or incomplete line(s); those samples are made again" in caplog.text
    assert (rerun.resumed, rerun.generated, rerun.exit_code) == (ref.total - 1, 1, EXIT_OK)
    assert sample_files(out) == sample_files(ref_out)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert [strict_json(line)["index"] for line in lines] == list(range(ref.total))


def test_line_whose_image_was_deleted_is_dropped(reference_run, copy_of, job_config, sample_files):
    ref_out, ref = reference_run
    out = copy_of(ref_out)
    (out / CATEGORY / "test" / "defect" / "0001.png").unlink()

    rerun = run_job(job_config(out, num=ref.total), progress=False)
    assert (rerun.resumed, rerun.generated) == (ref.total - 1, 1)
    assert sample_files(out) == sample_files(ref_out)
    indices = [e["index"] for e in manifest(out)]
    assert sorted(indices) == list(range(ref.total)) and len(set(indices)) == ref.total


def test_duplicate_manifest_line_is_dropped(reference_run, copy_of, job_config, caplog):
    ref_out, ref = reference_run
    out = copy_of(ref_out)
    first = (out / "manifest.jsonl").read_text().splitlines()[0]
    with open(out / "manifest.jsonl", "a") as f:
        f.write(first + "\n")

    with caplog.at_level(logging.WARNING, logger="adabldm"):
        rerun = run_job(job_config(out, num=ref.total), progress=False)
    assert (rerun.resumed, rerun.generated, rerun.exit_code) == (ref.total, 0, EXIT_OK)
    assert [e["index"] for e in manifest(out)] == list(range(ref.total))
    (message,) = [r.getMessage() for r in caplog.records if "manifest" in r.getMessage()]
    assert message == "manifest: dropped 1 duplicate line(s) (one line kept per sample)"


def test_resume_with_batch_size_2(reference_run_b2, tmp_path, job_config, monkeypatch, sample_files):
    """Chunks are [0, 1], [2, 3]: sample 1 is redone inside the same batch as before."""
    ref_out, ref = reference_run_b2
    assert ref.exit_code == EXIT_OK and {e["batch_size"] for e in manifest(ref_out)} == {2}
    out = tmp_path / "b"
    interrupt_after(monkeypatch, "write_sample", calls=1)
    report = run_job(job_config(out, num=ref.total, batch_size=2), progress=False)
    assert report.interrupted and [e["index"] for e in manifest(out)] == [0]
    monkeypatch.undo()

    rerun = run_job(job_config(out, num=ref.total, batch_size=2), progress=False)
    assert (rerun.resumed, rerun.generated, rerun.exit_code) == (1, ref.total - 1, EXIT_OK)
    assert sample_files(out) == sample_files(ref_out)
    assert sorted(e["index"] for e in manifest(out)) == list(range(ref.total))


def test_other_settings_on_the_same_out_are_refused(reference_run, copy_of, job_config):
    ref_out, ref = reference_run
    out = copy_of(ref_out)
    before = (out / "manifest.jsonl").read_bytes()
    with pytest.raises(InputError, match="sampler.steps: 4 there, 5 now") as exc:
        run_job(job_config(out, num=ref.total, steps=5), progress=False)
    assert str(out) in str(exc.value) and "resolution" not in str(exc.value)  # only what differs
    assert (out / "manifest.jsonl").read_bytes() == before
    # The images are resized to the resolution: their pixels differ too.
    with pytest.raises(InputError, match=r"resolution: 64 there, 128 now; seed: 0 there, 1 now;"
                                         r" inputs: the same names, other pixels"):
        run_job(job_config(out, num=ref.total, resolution=128, seed=1), progress=False)


def test_other_batch_size_on_resume_is_refused_naming_both(reference_run, copy_of, job_config):
    """The bytes depend on the batch size (batched CPU convolutions): a resume keeps it."""
    ref_out, ref = reference_run
    out = copy_of(ref_out)
    before = (out / "manifest.jsonl").read_bytes()
    with pytest.raises(InputError, match="--batch-size 2: the 3 finished sample") as exc:
        run_job(job_config(out, num=ref.total + 1, batch_size=2), progress=False)
    assert "--batch-size 1" in str(exc.value) and str(out) in str(exc.value)
    assert (out / "manifest.jsonl").read_bytes() == before
    assert run_job(job_config(out, num=ref.total + 1, batch_size=1), progress=False).generated == 1


# ---------------------------------------------------------------------------------------
# One run per output folder


def test_run_on_a_folder_in_use_is_refused_and_writes_nothing(tmp_path, job_config):
    out = tmp_path / "out"
    with folder_lock(out):
        with pytest.raises(InputError, match=f"in use by another run \\(pid {os.getpid()} on .*, started 20"):
            run_job(job_config(out, num=1), progress=False)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    report = run_job(job_config(out, num=1), progress=False)  # free again
    assert report.exit_code == EXIT_OK and not (out / LOCK_NAME).exists()


def test_the_lock_is_held_for_the_whole_run(tmp_path, job_config, monkeypatch):
    """A second run started while the first writes is refused: every index once."""
    out, seen = tmp_path / "out", []
    real = job.write_sample

    def second_run_meanwhile(layout, sample, *args):
        with pytest.raises(InputError, match="in use by another run"):
            run_job(job_config(out, num=2), progress=False)
        seen.append(sample.plan.index)
        real(layout, sample, *args)

    monkeypatch.setattr(job, "write_sample", second_run_meanwhile)
    report = run_job(job_config(out, num=2), progress=False)
    assert report.generated == 2 and seen == [0, 1]
    assert [e["index"] for e in manifest(out)] == [0, 1]


def test_unreadable_run_record_is_refused(tmp_path, job_config):
    out = tmp_path / "b"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "defect.json").write_text("{ not json")
    with pytest.raises(InputError, match="not a readable run record") as exc:
        run_job(job_config(out, num=1), progress=False)
    assert str(out / "runs" / "defect.json") in str(exc.value)


def test_larger_num_adds_samples(reference_run, copy_of, job_config, sample_files):
    ref_out, ref = reference_run
    out = copy_of(ref_out)
    more = run_job(job_config(out, num=ref.total + 1), progress=False)
    assert (more.resumed, more.generated, more.total, more.exit_code) == (ref.total, 1, ref.total + 1, EXIT_OK)
    files = sample_files(out)
    assert len(files) == 2 * (ref.total + 1)
    assert {k: v for k, v in files.items() if k in sample_files(ref_out)} == sample_files(ref_out)
    assert [e["index"] for e in manifest(out)] == list(range(ref.total + 1))


# ---------------------------------------------------------------------------------------
# Bad inputs


def test_one_corrupt_image_is_skipped(tmp_path, job_config, make_image):
    images = tmp_path / "images"
    make_image(images / "a.png", 80, 96, seed=1)
    make_image(images / "c.png", 50, 70, seed=2, channels=1)
    (images / "b.png").write_bytes(np.random.default_rng(0).bytes(500))
    report = run_job(job_config(tmp_path / "out", num=2, images=images), progress=False)
    assert report.exit_code == EXIT_PARTIAL == 3
    assert len(report.skipped_inputs) == 1 and str(images / "b.png") in report.skipped_inputs[0]
    assert report.generated == 2 and not report.failed
    assert [e["source"] for e in manifest(tmp_path / "out")] == [str(images / "a.png"), str(images / "c.png")]


def test_all_images_corrupt(tmp_path, job_config):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.jpg"):
        (images / name).write_bytes(b"garbage" * 50)
    with pytest.raises(InputError, match="none of the OK images") as exc:
        run_job(job_config(tmp_path / "out", num=1, images=images), progress=False)
    assert str(images) in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_missing_images_folder(tmp_path, job_config):
    with pytest.raises(InputError, match="not found") as exc:
        run_job(job_config(tmp_path / "out", num=1, images=tmp_path / "absent"), progress=False)
    assert str(tmp_path / "absent") in str(exc.value)


def test_images_given_as_a_file(tmp_path, job_config, make_image):
    path = make_image(tmp_path / "one.png")
    with pytest.raises(InputError, match="is a file: expected a folder of images") as exc:
        run_job(job_config(tmp_path / "out", num=1, images=path), progress=False)
    assert str(path) in str(exc.value) and not (tmp_path / "out").exists()


def test_missing_foreground_folder(tmp_path, job_config, make_image):
    make_image(tmp_path / "images" / "a.png")
    with pytest.raises(InputError, match="foreground mask folder not found") as exc:
        run_job(job_config(tmp_path / "out", num=1, images=tmp_path / "images", foreground=tmp_path / "fg"),
                progress=False)
    assert str(tmp_path / "fg") in str(exc.value)


def test_foreground_without_images_is_refused(tmp_path, job_config):
    with pytest.raises(ValueError, match="needs --images") as exc:
        job_config(tmp_path / "out", num=1, foreground=tmp_path / "fg")
    assert str(tmp_path / "fg") in str(exc.value)


def test_foreground_of_other_size_skips_its_image(tmp_path, job_config, make_image):
    images, fg = tmp_path / "images", tmp_path / "fg"
    make_image(images / "a.png", height=64, width=72, seed=1)
    make_image(images / "b.png", height=64, width=64, seed=2)
    fg.mkdir()
    Image.fromarray(np.full((40, 50), 255, np.uint8)).save(fg / "a.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(fg / "b_mask.png")
    report = run_job(job_config(tmp_path / "out", num=1, images=images, foreground=fg), progress=False)
    assert report.exit_code == EXIT_PARTIAL and report.generated == 1
    (message,) = report.skipped_inputs
    assert message == f"foreground mask {fg / 'a.png'} (50x40) does not match image {images / 'a.png'} (72x64)"
    assert manifest(tmp_path / "out")[0]["source"] == str(images / "b.png")


def test_defect_that_cannot_fit_fails_only_its_sample(tmp_path, job_config, make_image):
    """Sample 0 uses a.png (foreground: left half), where a full-image defect cannot fit;
    sample 1 uses b.png (foreground: all), where it can."""
    images, fg, masks = tmp_path / "images", tmp_path / "fg", tmp_path / "masks"
    make_image(images / "a.png", seed=1)
    make_image(images / "b.png", seed=2)
    fg.mkdir()
    masks.mkdir()
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(fg / "a.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(fg / "b.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(masks / "everything.png")
    out = tmp_path / "out"
    report = run_job(job_config(out, num=2, images=images, foreground=fg, masks=masks), progress=False)
    assert report.exit_code == EXIT_PARTIAL and not report.skipped_inputs
    assert list(report.failed) == [0] and "fits nowhere" in report.failed[0]
    assert report.generated == 1
    (entry,) = [strict_json(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert entry["index"] == 1 and entry["source"] == str(images / "b.png")
    assert entry["quality"]["bg_psnr_after"] is None  # no background left: no PSNR, still strict JSON
    assert not (out / CATEGORY / "test" / "defect" / "0000.png").exists()
    assert (read_gray(out / CATEGORY / "ground_truth" / "defect" / "0001_mask.png") == 255).all()


def test_defect_mask_without_defect_is_skipped(tmp_path, job_config):
    masks = tmp_path / "masks"
    masks.mkdir()
    faint = np.zeros((64, 64), np.uint8)
    faint[10:30, 10:30] = 150  # below the 200 threshold
    Image.fromarray(faint).save(masks / "faint.png")
    real = np.zeros((48, 48), np.uint8)
    real[20:30, 5:40] = 255
    Image.fromarray(real).save(masks / "scratch.png")
    out = tmp_path / "out"
    report = run_job(job_config(out, num=1, masks=masks), progress=False)
    assert report.exit_code == EXIT_PARTIAL and report.generated == 1
    (message,) = report.skipped_inputs
    assert str(masks / "faint.png") in message and "no pixel >= 200" in message
    assert manifest(out)[0]["mask_source"] == str(masks / "scratch.png")


def test_no_usable_defect_mask(tmp_path, job_config):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(masks / "empty.png")
    with pytest.raises(InputError, match="none of the defect masks") as exc:
        run_job(job_config(tmp_path / "out", num=1, masks=masks), progress=False)
    assert str(masks) in str(exc.value)


def test_several_defect_types_share_one_category_folder(reference_run, copy_of, job_config):
    ref_out, _ = reference_run
    out = copy_of(ref_out)
    before = (out / "manifest.jsonl").read_text().splitlines()
    report = run_job(job_config(out, num=2, defect="scratch"), progress=False)
    assert report.generated == 2 and report.exit_code == 0
    assert sorted(p.name for p in (out / CATEGORY / "test" / "scratch").iterdir()) == ["0000.png", "0001.png"]
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert lines[: len(before)] == before  # the first defect type's lines are untouched
    assert [json.loads(x)["defect"] for x in lines[len(before):]] == ["scratch", "scratch"]
    assert (out / "runs" / "scratch.json").is_file() and (out / "contact_sheet_scratch.png").is_file()
    again = run_job(job_config(out), progress=False)  # the first type still resumes
    assert again.generated == 0 and again.resumed == len(before)


def test_missing_extras_leave_the_sample_out_of_the_contact_sheet_only(reference_run, copy_of, job_config):
    out = copy_of(reference_run[0])
    (out / "extra" / "defect" / "0001_source.png").unlink()
    (out / "contact_sheet_defect.png").unlink()
    report = run_job(job_config(out), progress=False)
    assert report.exit_code == 0 and report.generated == 0
    with Image.open(out / "contact_sheet_defect.png") as sheet:
        assert sheet.height < 3 * 160  # two rows of three


# ---------------------------------------------------------------------------------------
# Objects, thin defects, the foreground


def small_objects(path: Path, size: int = 64, side: int = 14) -> Path:
    """Four bright squares on a dark plain background (an object category)."""
    rng = np.random.default_rng(0)
    image = rng.normal(30, 4, (size, size, 3))
    for y, x in ((4, 4), (4, 40), (40, 4), (40, 40)):
        image[y : y + side, x : x + side] = rng.normal(200, 6, (side, side, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


def with_masks(cfg, **mask_settings):
    gen = cfg.generation
    return dataclasses.replace(cfg, generation=dataclasses.replace(gen, masks=dataclasses.replace(gen.masks, **mask_settings)))


def test_procedural_defects_are_sized_to_small_objects(tmp_path, job_config):
    images = tmp_path / "images"
    small_objects(images / "objects.png")
    out = tmp_path / "out"
    report = run_job(with_masks(job_config(out, num=4, images=images), foreground="otsu"), progress=False)
    assert (report.generated, report.exit_code) == (4, EXIT_OK), report.failed
    for e in manifest(out):
        trimap = read_gray(out / "extra" / "defect" / f"{e['index']:04d}_trimap.png")
        mask = read_gray(out / e["mask"]) == 255
        assert mask.any() and (trimap[mask] == 255).all() and (trimap == 0).sum() > 0.7 * trimap.size
        assert max(e["placement"]["height"], e["placement"]["width"]) <= 14


def test_a_run_that_makes_no_sample_is_an_error_with_a_hint(tmp_path, job_config, make_image):
    images, fg, masks = tmp_path / "images", tmp_path / "fg", tmp_path / "masks"
    make_image(images / "a.png")
    fg.mkdir()
    masks.mkdir()
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(fg / "a.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(masks / "everything.png")
    report = run_job(job_config(tmp_path / "out", num=2, images=images, foreground=fg, masks=masks), progress=False)
    assert report.generated == 0 and sorted(report.failed) == [0, 1]
    assert report.exit_code == 1
    assert "no sample could be made" in report.error and "--scale-range" in report.error and "--masks" in report.error


def test_thin_scratch_at_a_small_scale_is_made_and_said(tmp_path, job_config):
    masks = tmp_path / "masks"
    masks.mkdir()
    scratch = np.zeros((64, 64), np.uint8)
    scratch[np.arange(5, 60), np.arange(5, 60)] = 255  # 1 px diagonal
    Image.fromarray(scratch).save(masks / "scratch.png")
    out = tmp_path / "out"
    report = run_job(with_masks(job_config(out, num=2, masks=masks), scale=(0.25, 0.45)), progress=False)
    assert (report.generated, report.exit_code) == (2, EXIT_OK), report.failed
    assert report.thin_resampled == [0, 1]
    for e in manifest(out):
        assert e["placement"]["thin_resampled"] is True and e["defect_pixels"] >= 10


def test_foreground_min_area_drops_a_lit_patch_of_background(tmp_path, job_config):
    """A bright 12 x 12 patch beside the object: kept as foreground at the default 0.5%,
    dropped with --foreground-min-area 0.05 (5% of the image); the trimap shows which."""
    images = tmp_path / "images"
    images.mkdir()
    image = np.full((64, 64, 3), 30, np.uint8)
    image[16:48, 16:48] = 200  # the object, 25% of the image
    image[2:14, 50:62] = 210  # lit background, 3.5%
    Image.fromarray(image).save(images / "a.png")

    def trimap_of(out, **kw):
        cfg = with_masks(dataclasses.replace(job_config(out, num=1, images=images), **kw), foreground="otsu")
        assert run_job(cfg, progress=False).generated == 1
        return read_gray(out / "extra" / "defect" / "0000_trimap.png")

    assert (trimap_of(tmp_path / "default")[2:14, 50:62] > 0).all()
    assert (trimap_of(tmp_path / "dropped", foreground_min_area=0.05)[2:14, 50:62] == 0).all()
