"""adabldm-train with a user's own data and run directories: what a new user runs into.

Tiny model, 64 px, one or two steps; real textures from scikit-image with drawn scratches
(MVTec AD layout: test/<defect>/NNN.png, ground_truth/<defect>/NNN_mask.png).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from adabldm_core.io import LOCK_NAME, InputError, folder_lock
from click.testing import CliRunner
from PIL import Image, ImageDraw

from adabldm_ref.models import ModelLoadError, load_controlnet
from adabldm_ref.train import TrainConfig, load_data, train
from adabldm_ref.train_cli import main as train_main

SIZE = 96


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory) -> Path:
    """An MVTec-like category: train/good (3 textures), test/scratch + ground_truth/scratch (3)."""
    from skimage import data

    root = tmp_path_factory.mktemp("mvtec")
    for sub in ("train/good", "test/scratch", "ground_truth/scratch"):
        (root / sub).mkdir(parents=True)
    for name in ("brick", "gravel", "grass"):
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((SIZE, SIZE)).save(root / "train/good" / f"{name}.png")
    brick = Image.fromarray(data.brick()).convert("RGB").resize((SIZE, SIZE))
    for i in range(3):
        image, mask = brick.copy(), Image.new("L", (SIZE, SIZE), 0)
        line = [(30 + 10 * i, 30), (50 + 10 * i, 55)]
        ImageDraw.Draw(image).line(line, fill=(20, 20, 20), width=7)
        ImageDraw.Draw(mask).line(line, fill=255, width=7)
        image.save(root / "test/scratch" / f"{i:03d}.png")
        mask.save(root / "ground_truth/scratch" / f"{i:03d}_mask.png")
    return root


def config(root: Path, out: Path, **kw) -> TrainConfig:
    settings = dict(images=root / "train/good", defects=root / "test/scratch",
                    defect_masks=root / "ground_truth/scratch", out=out, object_name="brick", defect="scratch",
                    resolution=64, steps=1, batch_size=2, lr=1e-3, validate_samples=1, validate_steps=2)
    return TrainConfig(**{**settings, **kw})


def cli_args(root: Path, out: Path, *more) -> list[str]:
    return [str(a) for a in ["--images", root / "train/good", "--defects", root / "test/scratch",
                             "--defect-masks", root / "ground_truth/scratch", "--object", "brick",
                             "--defect", "scratch", "--resolution", "64", "--steps", "1", "--batch-size", "2",
                             "--validate-samples", "1", "--validate-steps", "2", "--quiet", "--out", out, *more]]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------
# Two trainings on one --out


def test_a_second_training_on_the_same_out_is_refused_and_changes_nothing(mvtec, tmp_path):
    """Before the lock both ran: loss.jsonl got every step twice, checkpoints raced."""
    out = tmp_path / "run"
    train(config(mvtec, out), progress=False)
    before = snapshot(out)
    with folder_lock(out):  # the first run, still training
        with pytest.raises(InputError, match=r"run is in use by another run \(pid \d+"):
            train(config(mvtec, out, steps=2), progress=False)
        result = CliRunner().invoke(train_main, cli_args(mvtec, out, "--steps", "2"))
        assert result.exit_code == 1 and "in use by another run" in result.output
        assert "Traceback" not in result.output
    assert snapshot(out) == before


def test_a_stale_lock_file_does_not_make_a_new_out_look_foreign(mvtec, tmp_path):
    """A run killed with SIGKILL leaves its lock file behind (the lock itself dies with it)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text('{"pid": 1, "host": "x", "started": "then"}\n')
    report = train(config(mvtec, out), progress=False)
    assert report.steps == 1 and (out / "controlnet" / "config.json").is_file()
    assert not (out / LOCK_NAME).exists()


def test_bad_data_leaves_no_out_folder_behind(mvtec, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mvtec, root)
    (root / "ground_truth/scratch/000_mask.png").unlink()
    out = tmp_path / "new" / "run"
    result = CliRunner().invoke(train_main, cli_args(root, out))
    assert result.exit_code == 1 and "000.png has no mask" in result.output
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------------------------------
# Bad option values are usage errors: exit 2, a message naming the value, nothing written


@pytest.mark.parametrize("more, want", [
    (["--device", "gpu"], "'gpu': expected auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "'cuda:x': expected auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:63"], "--device cuda:63: this machine has"),  # a traceback from torch before
    (["--resolution", "100"], "--resolution 100: expected a positive multiple of 64"),
    (["--shots", "0"], "--shots 0: expected at least 1"),
    (["--batch-size", "0"], "--batch-size 0: expected at least 1"),
])
def test_a_bad_option_value_is_a_usage_error(mvtec, tmp_path, more, want):
    out = tmp_path / "run"
    result = CliRunner().invoke(train_main, cli_args(mvtec, out, *more))
    assert result.exit_code == 2, result.output
    assert want in result.output and "Traceback" not in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------
# The trained ControlNet in adabldm-run / adabldm-export --controlnet


def test_controlnet_accepts_the_run_directory_and_names_a_wrong_folder(mvtec, tmp_path, tiny):
    """``--controlnet OUT`` (the folder the user trained into) was diffusers' OSError traceback."""
    out = tmp_path / "run"
    train(config(mvtec, out), progress=False)
    from_run = load_controlnet(out, tiny.unet).state_dict()
    direct = load_controlnet(out / "controlnet", tiny.unet).state_dict()
    assert from_run.keys() == direct.keys() and all(torch.equal(from_run[k], direct[k]) for k in direct)
    with pytest.raises(ModelLoadError, match=r"ControlNet folder .*scratch has no config.json: expected a diffusers"):
        load_controlnet(mvtec / "test/scratch", tiny.unet)
    (out / "controlnet").rename(tmp_path / "moved")  # a run that has not finished yet
    with pytest.raises(ModelLoadError, match="run directory whose training has not finished"):
        load_controlnet(out, tiny.unet)


# ---------------------------------------------------------------------------------------
# A damaged OK image among usable ones


def test_a_corrupt_ok_image_is_skipped_with_a_warning_naming_it(mvtec, tmp_path):
    """Was 'error: ...gravel.png: not a readable image' and no training (adabldm-run skips it)."""
    root = tmp_path / "data"
    shutil.copytree(mvtec, root)
    good = root / "train/good"
    (good / "gravel.png").write_bytes((good / "gravel.png").read_bytes()[:300])  # truncated
    out = tmp_path / "run"
    result = CliRunner().invoke(train_main, cli_args(root, out))
    assert result.exit_code == 3, result.output
    assert "skipped:" in result.output and "gravel.png: not a readable image" in result.output
    record = json.loads((out / "train.json").read_text())
    assert record["status"] == "done" and record["data"]["ok_images"] == 2
    assert len(record["data"]["skipped"]) == 1 and "gravel.png" in record["data"]["skipped"][0]
    assert (out / "controlnet" / "config.json").is_file()
    rerun = CliRunner().invoke(train_main, cli_args(root, out, "--steps", "2"))  # same data: it continues
    assert rerun.exit_code == 3 and "continued from step 1" in rerun.output, rerun.output


def test_no_usable_ok_image_is_an_error(mvtec, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mvtec, root)
    for path in (root / "train/good").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"none of the 3 OK image\(s\) in .*good could be used"):
        load_data(config(root, tmp_path / "run"))


def test_the_mvtec_parent_folder_names_the_subfolders_to_pass(mvtec, tmp_path):
    """``--defects mvtec/bottle/test`` (one level too high) said only 'holds no image'."""
    args = cli_args(mvtec, tmp_path / "run")
    args[args.index("--defects") + 1] = str(mvtec / "test")
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 1 and f"defect image folder {mvtec / 'test'} holds no image" in result.output
    assert f"its subfolders scratch do: pass one of them (e.g. {mvtec / 'test' / 'scratch'})" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("top", [0, 1])
def test_an_empty_or_0_1_defect_mask_is_an_error_that_says_why(mvtec, tmp_path, top):
    """A 0/1 mask (a label map) said only 'no pixel >= 200 (no defect)', as an all-black one."""
    root = tmp_path / "data"
    shutil.copytree(mvtec, root)
    path = root / "ground_truth/scratch/000_mask.png"
    mask = (np.asarray(Image.open(path)) >= 128).astype(np.uint8) * top
    Image.fromarray(mask).save(path)
    result = CliRunner().invoke(train_main, cli_args(root, tmp_path / "run"))
    assert result.exit_code == 1 and "000_mask.png has no pixel >= 200 (no defect)" in result.output
    assert ("its largest value is 1: masks are 0 (good) / 255 (defect)" in result.output) == (top == 1)
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_an_out_that_cannot_be_made_is_an_error_naming_it(mvtec, tmp_path):
    """Was a NotADirectoryError / PermissionError traceback from mkdir."""
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / "run"
    result = CliRunner().invoke(train_main, cli_args(mvtec, out))
    assert result.exit_code == 1, result.output
    assert f"error: {out}: cannot write there (Not a directory): choose another --out" in result.output
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder"


def test_a_stray_file_in_checkpoints_does_not_stop_the_resume(mvtec, tmp_path):
    """A file manager's 'step-00000001 (copy).pt' stopped the rerun with
    "error: invalid literal for int() with base 10: '00000001 (copy)'"."""
    out = tmp_path / "run"
    train(config(mvtec, out), progress=False)
    stray = out / "checkpoints" / "step-00000001 (copy).pt"
    shutil.copy(out / "checkpoints" / "step-00000001.pt", stray)
    result = CliRunner().invoke(train_main, cli_args(mvtec, out, "--steps", "2", "--lr", "1e-3"))
    assert result.exit_code == 0 and "continued from step 1" in result.output, result.output
    assert stray.is_file() and (out / "checkpoints" / "step-00000002.pt").is_file()


def test_a_run_whose_checkpoints_were_deleted_says_it_starts_again(mvtec, tmp_path, caplog):
    """Extending a finished run after deleting checkpoints/ silently retrained from step 0."""
    out = tmp_path / "run"
    train(config(mvtec, out), progress=False)
    shutil.rmtree(out / "checkpoints")
    with caplog.at_level("WARNING"):
        report = train(config(mvtec, out, steps=2), progress=False)
    assert report.start == 0
    assert "records step 1 but" in caplog.text and "holds no checkpoint: training again from step 0" in caplog.text


def test_sigterm_stops_the_run_as_ctrl_c_does(mvtec, tmp_path, sigterm_when):
    """``timeout`` and batch schedulers send SIGTERM: it ended the run silently (exit -15),
    its lock file left behind; now the resume hint, exit 130, the lock released."""
    out = tmp_path / "run"
    args = cli_args(mvtec, out, "--steps", "1000", "--checkpoint-every", "1", "--device", "cpu")
    first = out / "checkpoints" / "step-00000001.pt"
    returncode, output = sigterm_when(["-m", "adabldm_ref.train_cli", *args], first.is_file,
                                      env={"ADABLDM_MODEL": "tiny"}, wait=240)
    assert returncode == 130, output
    assert "interrupted; rerun the same command to resume" in output and "Traceback" not in output
    assert not (out / LOCK_NAME).exists()
    assert json.loads((out / "train.json").read_text())["status"] == "running"
