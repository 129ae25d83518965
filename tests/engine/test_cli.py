"""adabldm-run: options -> JobConfig -> run_job, the summary line and the exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import adabldm_engine.job as job
import click
import numpy as np
import pytest
from adabldm_core.io import folder_lock
from adabldm_engine.cli import SECTIONS, main
from click.testing import CliRunner
from PIL import Image


@pytest.fixture
def run_cli():
    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def test_help(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0
    for option in ("--batch", "--num", "--out", "--images", "--masks", "--resolution"):
        assert option in result.output
    assert "Exit codes" in result.output


def test_without_batch_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("--out", tmp_path / "out", "--num", 1)
    assert result.exit_code == 2
    assert "choose a mode: --batch" in result.output
    assert not (tmp_path / "out").exists()


def test_batch_without_out_is_a_usage_error(run_cli):
    result = run_cli("--batch", "--num", 1)
    assert result.exit_code == 2 and "Missing option '--out'" in result.output


def test_help_lists_the_options_in_sections(run_cli):
    text = run_cli("--help").output
    titles = [title for title, _ in SECTIONS]
    assert titles == ["Inputs", "Masks", "Sampler", "Adaptation", "Model and runtime", "Quality gate", "Output"]
    positions = [text.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions)
    ctx = click.Context(main)
    names = ["help" if p is main.get_help_option(ctx) else p.name for p in main.get_params(ctx)]
    listed = [n for _, section in SECTIONS for n in section]
    assert sorted(listed) == sorted(names)  # every option in exactly one section
    out_help = text[text.index("--out DIRECTORY"):text.index("--num")]
    assert "[required]" in out_help
    for prose in ("measured", "benchmarks/", " dB", "faster", "2.1x"):
        assert prose not in text, prose


def test_option_defaults_are_the_configuration_defaults():
    """The command line holds literal defaults (so that it imports nothing heavy): the same
    as the configuration's and the library's."""
    from adabldm_core.precision import ADAPT_PRECISIONS, choices
    from adabldm_engine import cli
    from adabldm_engine.backends import BACKENDS
    from adabldm_engine.gate import GateConfig

    from adabldm_ref.config import (
        AdaptConfig,
        GenerationConfig,
        MaskConfig,
        SamplerConfig,
    )
    from adabldm_ref.masks import FOREGROUND_MIN_AREA
    from adabldm_ref.procedural import KINDS

    gen, sampler, adapt, masks = GenerationConfig(), SamplerConfig(), AdaptConfig(), MaskConfig()
    expected = {
        "object_name": gen.object_name, "defect": gen.defect, "seed": gen.seed, "resolution": gen.resolution,
        "prompt_suffix": gen.prompt_suffix, "steps": sampler.steps, "guidance": sampler.guidance,
        "control_scale": sampler.control_scale, "renoise": sampler.renoise, "adapt_iters": None,
        "adapt_lr": None, "preservation": adapt.preservation, "rotate": masks.rotate,
        "foreground_mode": masks.foreground, "keep_thin": masks.keep_thin,
        "foreground_min_area": job.JobConfig.foreground_min_area, "batch_size": job.JobConfig.batch_size,
        "backend": job.JobConfig.backend, "adapt_precision": str(job.JobConfig.adapt_precision),
        "cuda_graphs": job.JobConfig.cuda_graphs, "allow_pickle": job.JobConfig.allow_pickle,
        "min_bg_psnr": GateConfig.min_bg_psnr, "min_defect_strength": GateConfig.min_defect_strength,
        "max_attempts": GateConfig.max_attempts, "gate": False,
        "adapt_region": job.JobConfig.adapt_region, "adapt_margin": job.JobConfig.adapt_margin,
    }
    assert GateConfig.max_leakage is None and GateConfig.max_seam is None  # the options' "not checked"
    ctx = click.Context(main)
    defaults = {p.name: p.get_default(ctx) for p in main.params}
    assert {k: defaults[k] for k in expected} == expected
    assert defaults["scale_range"] == ",".join(str(v) for v in masks.scale)
    assert defaults["procedural"] == ",".join(job.JobConfig.procedural) == ",".join(KINDS)
    assert cli.KINDS == KINDS and cli.BACKENDS == BACKENDS and cli.FOREGROUND_MIN_AREA == FOREGROUND_MIN_AREA
    params = {p.name: p for p in main.params}
    assert list(params["adapt_precision"].type.choices) == choices(ADAPT_PRECISIONS) == list(cli.ADAPT_PRECISIONS)
    assert tuple(params["adapt_region"].type.choices) == job.ADAPT_REGIONS
    from adabldm_engine.adaptation import ROI_ADAPT

    assert cli.ROI_ADAPT == ROI_ADAPT and cli.IMAGE_ADAPT == (adapt.iters, adapt.lr)  # per-region defaults


def test_help_and_usage_errors_import_nothing_heavy(tmp_path):
    """--help and a usage error answer before torch, diffusers or the job are imported."""
    code = (
        "import sys\n"
        "from adabldm_engine.cli import main\n"
        "for args in (['--help'], ['--batch', '--out', sys.argv[1], '--num', '0']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        print('exit', exc.code)\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'adabldm_engine.job', 'adabldm_ref')\n"
        "print('imported', [m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=120)
    assert "exit 0\nexit 2\n" in result.stdout, result.stderr
    assert "imported []" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value", [
    ("--num", 0), ("--steps", 1), ("--resolution", 250), ("--batch-size", 0), ("--adapt-lr", 0),
    ("--adapt-iters", -1), ("--preservation", -1), ("--seed", -1), ("--foreground-min-area", 1.5),
    ("--rotate", -5), ("--device", "gpu"),
])
def test_bad_option_value_is_a_usage_error_that_writes_nothing(run_cli, tmp_path, option, value):
    result = run_cli("--batch", "--out", tmp_path / "out", option, value)
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output and "Error: Invalid value" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--backend", "onnxruntime"], "--backend onnxruntime runs exported networks: it needs --bundle DIR"),
    (["--foreground", "fg"], "needs --images"),
])
def test_inconsistent_options_are_usage_errors(run_cli, tmp_path, args, message):
    result = run_cli("--batch", "--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["1.2", "a,b", "1.2,0.9", "0,1"])
def test_bad_scale_range_is_a_usage_error(run_cli, tmp_path, value):
    result = run_cli("--batch", "--out", tmp_path / "out", "--scale-range", value)
    assert result.exit_code == 2 and "LOW" in result.output


def test_bad_procedural_kind_is_a_usage_error(run_cli, tmp_path):
    result = run_cli("--batch", "--out", tmp_path / "out", "--procedural", "blob,dent")
    assert result.exit_code == 2 and "blob, scratch, crack" in result.output


def test_adaptation_learning_rate_reaches_the_run_record(run_cli, tmp_path, tiny_args):
    out = tmp_path / "out"
    result = run_cli("--batch", "--out", out, "--num", 1, *tiny_args, "--adapt-lr", "2e-4")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "runs" / "defect.json").read_text())
    assert record["settings"]["adapt"]["lr"] == 2e-4


def test_tiny_batch_run(run_cli, tmp_path, tiny_args):
    out = tmp_path / "out"
    result = run_cli("--batch", "--out", out, "--num", 2, "--defect", "scratch", *tiny_args)
    assert result.exit_code == 0, result.output
    assert "2/2 samples" in result.output and "(2 new, 0 resumed)" in result.output
    assert sorted(p.name for p in (out / "texture" / "test" / "scratch").iterdir()) == ["0000.png", "0001.png"]
    assert len(list((out / "texture" / "ground_truth" / "scratch").glob("*_mask.png"))) == 2
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["settings"]["defect"] for e in entries] == ["scratch", "scratch"]

    again = run_cli("--batch", "--out", out, "--num", 2, "--defect", "scratch", *tiny_args)
    assert again.exit_code == 0 and "(0 new, 2 resumed)" in again.output

    other = run_cli("--batch", "--out", out, "--num", 2, "--defect", "scratch", *tiny_args, "--seed", 1)
    assert other.exit_code == 1 and "error:" in other.output and str(out) in other.output


def test_missing_images_folder_is_an_error(run_cli, tmp_path, tiny_args):
    missing = tmp_path / "no_such_images"
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, "--images", missing, *tiny_args)
    assert result.exit_code == 1
    assert "error:" in result.output and str(missing) in result.output


def test_one_corrupt_image_exits_3(run_cli, tmp_path, tiny_args, make_image):
    images = tmp_path / "images"
    make_image(images / "good.png", 70, 90)
    (images / "zz_corrupt.png").write_bytes(np.random.default_rng(0).bytes(400))
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, "--images", images, *tiny_args)
    assert result.exit_code == 3, result.output
    assert "1/1 samples" in result.output and "1 input(s) skipped" in result.output


def test_interrupt_exits_130(run_cli, tmp_path, tiny_args, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "write_sample", ctrl_c)
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, *tiny_args)
    assert result.exit_code == 130
    assert "0/1 samples" in result.output


def test_bf16_adaptation_is_a_run_of_its_own_close_to_fp32(run_cli, tmp_path, tiny_args):
    from PIL import Image

    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    assert run_cli("--batch", "--out", fp32, "--num", 1, *tiny_args).exit_code == 0
    result = run_cli("--batch", "--out", bf16, "--num", 1, *tiny_args, "--adapt-precision", "bf16")
    assert result.exit_code == 0, result.output
    assert json.loads((bf16 / "runs" / "defect.json").read_text())["backend"] == "reference+adapt-bf16-roi4"
    a, b = (np.asarray(Image.open(d / "texture" / "test" / "defect" / "0000.png"), dtype=np.float64) for d in (fp32, bf16))
    psnr = 10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12))
    assert 30.0 < psnr < 200.0  # bf16 changes the last bits of the adapted image, not the image
    blended = [(d / "extra" / "defect" / "0000_blended.png").read_bytes() for d in (fp32, bf16)]
    assert blended[0] == blended[1]  # only adaptation runs in bf16
    mixed = run_cli("--batch", "--out", fp32, "--num", 1, *tiny_args, "--adapt-precision", "bf16")
    assert mixed.exit_code == 1 and "backend: reference+adapt-roi4 there, reference+adapt-bf16-roi4 now" in mixed.output


def test_second_run_on_a_busy_out_exits_1_naming_the_first(run_cli, tmp_path, tiny_args):
    out = tmp_path / "out"
    with folder_lock(out):
        result = run_cli("--batch", "--out", out, "--num", 1, *tiny_args)
    assert result.exit_code == 1
    assert f"error: {out} is in use by another run (pid {os.getpid()} on" in result.output
    assert not (out / "manifest.jsonl").exists()


def test_all_white_mask_closing_line_has_no_nan(run_cli, tmp_path, tiny_args):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(masks / "everything.png")
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, "--masks", masks, *tiny_args)
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output
    assert "background PSNR vs source: none, every defect mask covers its whole image" in result.output


def test_run_that_makes_nothing_exits_1_with_a_hint(run_cli, tmp_path, tiny_args):
    images, fg, masks = tmp_path / "images", tmp_path / "fg", tmp_path / "masks"
    for folder in (images, fg, masks):
        folder.mkdir()
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(images / "a.png")
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(fg / "a.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(masks / "everything.png")
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 2, "--images", images, "--foreground", fg,
                     "--masks", masks, *tiny_args)
    assert result.exit_code == 1, result.output
    assert "0/2 samples" in result.output and "error: no sample could be made" in result.output
    assert "--scale-range" in result.output and "--masks" in result.output


def test_thin_resampled_masks_are_said(run_cli, tmp_path, tiny_args):
    masks = tmp_path / "masks"
    masks.mkdir()
    scratch = np.zeros((64, 64), np.uint8)
    scratch[np.arange(5, 60), np.arange(5, 60)] = 255
    Image.fromarray(scratch).save(masks / "scratch.png")
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, "--masks", masks,
                     "--scale-range", "0.25,0.45", *tiny_args)
    assert result.exit_code == 0, result.output
    assert "1 defect mask(s) too thin at their scale, resampled" in result.output


def test_images_file_is_reported_as_a_file(run_cli, tmp_path, tiny_args, make_image):
    path = make_image(tmp_path / "one.png")
    result = run_cli("--batch", "--out", tmp_path / "out", "--num", 1, "--images", path, *tiny_args)
    assert result.exit_code == 1 and f"OK image folder {path} is a file" in result.output
    assert not (tmp_path / "out").exists()


def test_gate_thresholds_without_gate_and_bad_categories_are_usage_errors(run_cli, tmp_path, tiny_args):
    out = tmp_path / "out"
    result = run_cli("--batch", "--out", out, "--num", 1, "--min-bg-psnr", "20", *tiny_args)
    assert result.exit_code == 2 and "--min-bg-psnr: a gate threshold; needs --gate" in result.output
    result = run_cli("--batch", "--out", out, "--num", 1, "--gate", "--max-attempts", "99", *tiny_args)
    assert result.exit_code == 2 and "--max-attempts" in result.output
    result = run_cli("--batch", "--out", out, "--num", 1, "--category", "runs", *tiny_args)
    assert result.exit_code == 2 and "--category 'runs'" in result.output
    result = run_cli("--batch", "--out", out, "--num", 1, "--object", "!!", *tiny_args)
    assert result.exit_code == 2 and "give --category NAME" in result.output
    assert not out.exists()


def test_gated_run_with_a_category_reports_the_attempts(run_cli, tmp_path, tiny_args):
    out = tmp_path / "out"
    result = run_cli("--batch", "--out", out, "--num", 1, "--object", "metal nut", "--gate", "--min-bg-psnr", "99",
                     "--max-attempts", "2", *tiny_args)
    assert result.exit_code == 0, result.output
    assert "gate: 1 sample(s) made again [0]; 1 kept without passing (gate.passed false in the manifest): [0]" in (
        result.output)
    assert (out / "metal_nut" / "test" / "defect" / "0000.png").is_file()
    (entry,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert entry["category"] == "metal_nut" and entry["image"] == "metal_nut/test/defect/0000.png"
    assert [a["attempt"] for a in entry["gate"]["attempts"]] == [0, 1] and not entry["gate"]["passed"]
    check = run_cli("--batch", "--check", "--out", out, "--num", 1, "--object", "metal nut", *tiny_args)
    assert check.exit_code == 0 and "complete" in check.output
