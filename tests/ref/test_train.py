"""adabldm-train (adabldm_ref.train, train_cli): the recipe, the run directory, bit-for-bit
resume, the trained ControlNet in adabldm-run / adabldm-export, and bad inputs.

Tiny model, 64 px, a few steps at lr 1e-3 (the recipe's 1e-5 barely moves zero
convolutions in a few steps); real textures from scikit-image with drawn scratches.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from adabldm_core.io import InputError
from click.testing import CliRunner
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from adabldm_ref import fewshot
from adabldm_ref.models import build_tiny, load_models
from adabldm_ref.train import (
    TrainConfig,
    Trainer,
    TrainError,
    initial_controlnet,
    load_base,
    load_data,
    train,
)
from adabldm_ref.train_cli import main as train_main

SIZE = 96  # files on disk; training resizes to 64
HELD_OUT_COLOUR = (255, 0, 255)  # only the held-out defects are painted magenta


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread for the whole module, module fixtures included: the tiny model gains
    nothing from threads on a shared 2-core machine, and bit-for-bit resume holds for the
    same thread count (CPU kernels split their sums by thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def write_data(root: Path) -> Path:
    """ok/ (brick, gravel, grass), defects/NNN.png + masks/NNN_mask.png (6 scratches)."""
    from skimage import data

    for sub in ("ok", "defects", "masks"):
        (root / sub).mkdir(parents=True)
    for name in ("brick", "gravel", "grass"):
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((SIZE, SIZE)).save(root / "ok" / f"{name}.png")
    rng = np.random.default_rng(0)
    brick = Image.fromarray(data.brick()).convert("RGB").resize((SIZE, SIZE))
    for i in range(6):
        image, mask = brick.copy(), Image.new("L", (SIZE, SIZE), 0)
        x0, y0 = (int(v) for v in rng.integers(25, 70, 2))
        line = [(x0, y0), (x0 + int(rng.integers(-20, 20)), y0 + int(rng.integers(10, 25)))]
        colour = HELD_OUT_COLOUR if i >= 2 else (20, 20, 20)  # default split: 2 of 6 train
        ImageDraw.Draw(image).line(line, fill=colour, width=7)
        ImageDraw.Draw(mask).line(line, fill=255, width=7)
        image.save(root / "defects" / f"{i:03d}.png")
        mask.save(root / "masks" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


def config(data: Path, out: Path, **kw) -> TrainConfig:
    settings = dict(images=data / "ok", defects=data / "defects", defect_masks=data / "masks", out=out,
                    object_name="brick", defect="scratch", resolution=64, steps=6, batch_size=2, lr=1e-3,
                    checkpoint_every=2, validate_every=3, validate_samples=2, validate_steps=4)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """One finished 6-step run (checkpoints every 2, validation every 3)."""
    cfg = config(data_dir, tmp_path_factory.mktemp("runs") / "run")
    return cfg, train(cfg, progress=False)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "controlnet" / "diffusion_pytorch_model.safetensors")


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "loss.jsonl").read_text().splitlines())]


# ---------------------------------------------------------------------------------------
# The command


def test_help_has_sections_and_the_config_defaults():
    result = CliRunner().invoke(train_main, ["--help"])
    assert result.exit_code == 0
    for section in ("Data:", "Model:", "Recipe:", "Arithmetic:", "Run directory:"):
        assert section in result.output
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    checked = 0
    for param in train_main.params:
        if param.name in fields and not param.required and param.name != "device":  # auto: cuda if there is one
            assert param.default == fields[param.name], param.name
            checked += 1
    assert checked >= 20
    assert train_main.params[[p.name for p in train_main.params].index("scale_range")].default == "0.85,1.15"
    assert fields["scale"] == (0.85, 1.15)


def test_cli_trains_and_reports_errors(data_dir, tmp_path):
    args = ["--images", data_dir / "ok", "--defects", data_dir / "defects", "--defect-masks", data_dir / "masks",
            "--object", "brick", "--defect", "scratch", "--resolution", "64", "--steps", "2", "--batch-size", "1",
            "--validate-samples", "1", "--validate-steps", "2", "--device", "cpu", "--quiet"]
    run = lambda *more: CliRunner().invoke(train_main, [str(a) for a in [*args, *more]])  # noqa: E731
    ok = run("--out", tmp_path / "run")
    assert ok.exit_code == 0, ok.output
    assert "trained 2 steps (from scratch)" in ok.output and (tmp_path / "run" / "controlnet" / "config.json").is_file()
    refused = run("--out", tmp_path / "run", "--lr", "2e-5")
    assert refused.exit_code == 1 and "lr: this run has 1e-05, the command asks 2e-05" in refused.output
    too_many = run("--out", tmp_path / "other", "--shots", "7")
    assert too_many.exit_code == 1 and "--shots 7: only 6 defect image(s)" in too_many.output
    fp16 = run("--out", tmp_path / "fp16", "--precision", "fp16")
    assert fp16.exit_code == 2 and "fp16 needs --device cuda" in fp16.output  # an option combination: usage


# ---------------------------------------------------------------------------------------
# The run directory and resume


def test_run_directory(trained):
    cfg, report = trained
    run = report.out
    record = json.loads((run / "train.json").read_text())
    assert record["status"] == "done" and record["step"] == record["steps"] == 6
    assert record["split"]["train"] == ["000", "001"] and record["split"]["held_out"] == ["002", "003", "004", "005"]
    assert record["data"]["digest"] == record["settings"]["data_digest"] and record["model"]["identity"]
    assert record["prompt"] == "a brick with a scratch" and {"torch", "diffusers"} <= set(record["versions"])
    log = losses(run)
    assert [s for s, _ in log] == list(range(1, 7)) and record["final_loss"] == log[-1][1] == report.final_loss
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000004.pt", "step-00000006.pt"]
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step-00000003.png", "step-00000006.png"]
    assert Image.open(run / "loss.png").size == (640, 360)
    assert {"config.json", "diffusion_pytorch_model.safetensors"} <= {p.name for p in (run / "controlnet").iterdir()}
    # The exported ControlNet is the last checkpoint's, and loads as adabldm-run loads it.
    last = torch.load(run / "checkpoints" / "step-00000006.pt", weights_only=True)
    loaded = load_models(None, str(run / "controlnet")).controlnet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in last["controlnet"].items())
    assert not list(run.glob(".*"))  # no temporary file left behind


def test_killed_and_resumed_run_equals_an_uninterrupted_one(trained, tmp_path):
    cfg, report = trained
    resumed = dataclasses.replace(cfg, out=tmp_path / "resumed")

    def kill(step: int) -> None:
        if step == 5:  # after step 5: the last checkpoint is step 4's
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(resumed, progress=False, on_step=kill)
    assert not (resumed.out / "controlnet").exists()
    assert [s for s, _ in losses(resumed.out)] == [1, 2, 3, 4]  # step 5's loss was never flushed
    again = train(resumed, progress=False)
    assert again.start == 4
    a, b = weights(report.out), weights(resumed.out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert losses(resumed.out) == losses(report.out)
    opt_a = torch.load(report.out / "checkpoints" / "step-00000006.pt", weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(resumed.out / "checkpoints" / "step-00000006.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i])
    assert train(resumed, progress=False).start == 6  # a finished run is not trained again


def test_more_steps_continue_and_other_settings_are_refused(trained, data_dir, tmp_path):
    cfg, report = trained
    copy = tmp_path / "copy"
    shutil.copytree(report.out, copy)
    with pytest.raises(TrainError, match=r"lr: this run has 0\.001, the command asks 0\.0001"):
        train(dataclasses.replace(cfg, out=copy, lr=1e-4), progress=False)
    with pytest.raises(TrainError, match="rotate: this run has 360.0, the command asks 90.0"):
        train(dataclasses.replace(cfg, out=copy, rotate=90.0), progress=False)
    other = tmp_path / "data"
    shutil.copytree(data_dir, other)
    Image.open(other / "ok" / "grass.png").transpose(Image.FLIP_LEFT_RIGHT).save(other / "ok" / "grass.png")
    with pytest.raises(TrainError, match="data_digest"):
        train(config(other, copy), progress=False)
    longer = train(dataclasses.replace(cfg, out=copy, steps=8), progress=False)
    assert longer.start == 6 and [s for s, _ in losses(copy)] == list(range(1, 9))
    with pytest.raises(TrainError, match="reached step 8, beyond --steps 6"):
        train(dataclasses.replace(cfg, out=copy), progress=False)
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match="holds no train.json"):
        train(dataclasses.replace(cfg, out=tmp_path / "stranger"), progress=False)


def test_an_extended_run_stopped_at_its_last_checkpoint_writes_that_controlnet(trained, tmp_path):
    cfg, report = trained
    run = tmp_path / "extended"
    shutil.copytree(report.out, run)

    def kill(step: int) -> None:
        if step == 8:  # after step 8's checkpoint, before the end of a 10-step run
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(cfg, out=run, steps=10), progress=False, on_step=kill)
    assert train(dataclasses.replace(cfg, out=run, steps=8), progress=False).start == 8
    straight = train(dataclasses.replace(cfg, out=tmp_path / "straight", steps=8), progress=False)
    a, b = weights(straight.out), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)  # step 8's weights, not the 6-step run's


# ---------------------------------------------------------------------------------------
# The recipe


def test_loss_falls_over_a_short_run(data_dir, tmp_path):
    cfg = config(data_dir, tmp_path / "run", batch_size=4)
    trainer = Trainer(cfg, load_base(cfg), load_data(cfg))

    def fixed_loss() -> float:  # step 0's pairs, noise and timesteps: never trained on (steps start at 1)
        with torch.no_grad():
            return float(np.mean([trainer.loss(0, micro).item() for micro in range(3)]))

    before = fixed_loss()
    logged = [trainer.step(s).item() for s in range(1, 21)]
    after = fixed_loss()
    assert after < 0.9 * before, (before, after)
    assert np.mean(logged[-5:]) < np.mean(logged[:5]), logged


def test_only_the_controlnet_trains_from_the_unet(data_dir, tmp_path):
    cfg = config(data_dir, tmp_path / "run")
    models = load_base(cfg)
    frozen = {name: {k: v.clone() for k, v in m.state_dict().items()}
              for name, m in models.modules().items() if name != "controlnet"}
    start = {k: v.clone() for k, v in models.controlnet.state_dict().items()}
    unet = models.unet.state_dict()
    assert torch.equal(start["conv_in.weight"], unet["conv_in.weight"])  # the encoder is the UNet's copy
    assert all(not v.any() for k, v in start.items() if k.startswith("controlnet_down_blocks"))  # zero convs
    trainer = Trainer(cfg, models, load_data(cfg))
    trainer.step(1)
    for name, before in frozen.items():
        after = models.modules()[name].state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    moved = models.controlnet.state_dict()
    assert any(not torch.equal(start[k], moved[k]) for k in start)
    assert not any(p.requires_grad for m in (models.unet, models.vae, models.text_encoder) for p in m.parameters())
    assert isinstance(trainer.optimizer, torch.optim.AdamW) and trainer.optimizer.defaults["weight_decay"] == 1e-2


def test_accumulation_checkpointing_and_dropout(data_dir, tmp_path):
    def fresh(**kw) -> Trainer:
        cfg = config(data_dir, tmp_path / "run", **{"batch_size": 4, **kw})
        return Trainer(cfg, load_base(cfg), load_data(cfg))

    def first_step(**kw):
        trainer = fresh(**kw)
        loss = trainer.step(1).item()
        return trainer, loss, trainer.controlnet.state_dict()

    _, loss, w = first_step()
    # 2 x 2 accumulated sees the same 4 pairs with the same noise as one batch of 4.
    _, loss_acc, w_acc = first_step(batch_size=2, grad_accum=2)
    assert loss_acc == pytest.approx(loss, rel=1e-5)
    assert max((w[k] - w_acc[k]).abs().max().item() for k in w) < 1e-5
    _, loss_ckpt, w_ckpt = first_step(gradient_checkpointing=True)  # recomputation: same numbers
    assert loss_ckpt == loss and all(torch.equal(w[k], w_ckpt[k]) for k in w)
    _, loss_bf16, _ = first_step(precision="bf16")  # bf16 autocast on the CPU
    assert loss_bf16 == pytest.approx(loss, rel=0.02)
    # Empty-prompt dropout 1: the UNet always gets the empty prompt's embedding.
    dropped, by_hand, prompted = fresh(empty_prompt_p=1.0), fresh(), fresh()
    by_hand.prompt_emb = by_hand.empty_emb
    with torch.no_grad():
        assert dropped.loss(2, 0).item() == by_hand.loss(2, 0).item() != prompted.loss(2, 0).item()


# ---------------------------------------------------------------------------------------
# The split and bad inputs


def test_held_out_shots_are_never_read_nor_paired(data_dir, tmp_path, monkeypatch):
    read = []
    for name in ("read_image", "read_gray"):
        original = getattr(fewshot, name)
        monkeypatch.setattr(fewshot, name, lambda path, f=original: (read.append(Path(path)), f(path))[1])
    cfg = config(data_dir, tmp_path / "run")
    data = load_data(cfg)
    assert data.split.held_out == ("002", "003", "004", "005")
    assert {p.name for p in read if p.parent.name in ("defects", "masks")} == {
        "000.png", "001.png", "000_mask.png", "001_mask.png"}
    trainer_pairs = Trainer.pairs  # the trainer's own pair selection, without the models
    probe = type("Probe", (), {"cfg": dataclasses.replace(cfg, batch_size=8), "data": data})()
    for step in range(1, 21):
        for pair in trainer_pairs(probe, step, 0):
            assert pair.shot in ("000", "001")
            magenta = (pair.target[..., 0] > 200) & (pair.target[..., 1] < 80) & (pair.target[..., 2] > 200)
            assert not magenta.any()


def _edit(data_dir: Path, tmp_path: Path, case: str) -> tuple[Path, dict, str]:
    """A copy of the data with one defect; the TrainConfig overrides; the expected message."""
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    kw = {}
    if case == "mask size":
        Image.open(root / "masks" / "000_mask.png").resize((80, 80)).save(root / "masks" / "000_mask.png")
        want = r"000_mask.png \(80x80\) does not match its image"
    elif case == "empty mask":
        Image.new("L", (SIZE, SIZE), 199).save(root / "masks" / "001_mask.png")
        want = "001_mask.png has no pixel >= 200"
    elif case == "unpaired image":
        shutil.copy(root / "defects" / "000.png", root / "defects" / "010.png")
        want = "defect image .*010.png has no mask"
    elif case == "unpaired mask":
        shutil.copy(root / "masks" / "000_mask.png", root / "masks" / "011_mask.png")
        want = "defect mask .*011_mask.png has no defect image named 011"
    elif case == "too few shots":
        kw["shots"] = 7
        want = "--shots 7: only 6 defect image"
    elif case == "fits nowhere":
        (root / "fg").mkdir()
        for name in ("brick", "gravel", "grass"):
            fg = np.zeros((SIZE, SIZE), np.uint8)
            fg[40:46, 40:46] = 255
            Image.fromarray(fg).save(root / "fg" / f"{name}.png")
        kw["foreground"] = root / "fg"
        want = "defect .*000_mask.png .* fits in no OK image's foreground"
    elif case == "corrupt defect":
        (root / "defects" / "001.png").write_bytes(b"not a png")
        want = "001.png: not a readable image"
    return root, kw, want


@pytest.mark.parametrize("case", ["mask size", "empty mask", "unpaired image", "unpaired mask", "too few shots",
                                  "fits nowhere", "corrupt defect"])
def test_bad_input_is_an_error_naming_the_file(data_dir, tmp_path, case):
    # (a corrupt OK image among usable ones is skipped: tests/ref/test_train_user_data.py)
    root, kw, want = _edit(data_dir, tmp_path, case)
    with pytest.raises(InputError, match=want):
        load_data(config(root, tmp_path / "run", **kw))


def test_a_corrupt_held_out_file_is_not_read(data_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    (root / "defects" / "005.png").write_bytes(b"garbage")
    assert load_data(config(root, tmp_path / "run")).split.held_out[-1] == "005"


# ---------------------------------------------------------------------------------------
# The trained ControlNet in the pipeline, adabldm-run and adabldm-export


def test_trained_controlnet_changes_the_blend_inside_the_mask_only(trained):
    """What "inside the mask only" means exactly: the sampler keeps the OK latent outside
    the dilated latent mask during latent editing and the OK pixels outside M in the pixel
    stage's composite, so there the trained ControlNet changes nothing, bit for bit; inside
    it changes the composite. (The final image outside M still moves a little: the VAE
    re-encodes and decodes the whole composite through its mid-block attention, and
    adaptation then pulls the background back; see the adabldm-run test.)"""
    from adabldm_ref.config import AdaptConfig, GenerationConfig, SamplerConfig
    from adabldm_ref.pipeline import OkImage, RealMasks, plan_sample, reference_pipeline
    from adabldm_ref.sampler import stage_plan

    cfg, report = trained
    data = load_data(cfg)
    gen = GenerationConfig(resolution=64, sampler=SamplerConfig(steps=10), adapt=AdaptConfig(iters=0))
    oks = [OkImage(b.name, b.rgb, b.foreground) for b in data.backgrounds]
    masks = RealMasks(tuple((s.name, s.mask.astype(np.uint8) * 255) for s in data.shots))
    plans = [plan_sample(i, gen, oks, masks) for i in range(2)]

    def record(controlnet: str | None):
        models = load_models(None, controlnet) if controlnet else build_tiny()
        if controlnet is None:
            models.controlnet = initial_controlnet(models.unet, cfg)  # where training started
        unet_inputs, composites = [], []
        with reference_pipeline(models, gen) as pipe:
            denoiser, codec = pipe.denoiser, pipe.codec

            class Denoiser:
                def eps_fn(self, hint):
                    fn = denoiser.eps_fn(hint)
                    return lambda z, t: (unet_inputs.append(z.clone()), fn(z, t))[1]

            class Codec:
                def encode(self, x, noise):
                    composites.append(x.clone())
                    return codec.encode(x, noise)

                def decode(self, z):
                    return codec.decode(z)

            pipe.denoiser, pipe.codec = Denoiser(), Codec()
            pipe.run(plans)
        return unet_inputs, composites[1:]  # the first encode is x_OK's

    z_base, x_base = record(None)
    z_trained, x_trained = record(str(report.out / "controlnet"))
    keep = torch.stack([torch.from_numpy(p.m_keep) for p in plans])[:, None].expand(-1, 4, -1, -1) > 0.5
    stages = stage_plan(gen.sampler)
    edited = [i for i in range(gen.sampler.steps) if stages.latent_edit(i)]
    assert edited and keep.any() and not keep.all()
    for i in edited:
        assert torch.equal(z_base[i][keep], z_trained[i][keep])  # the OK latent, bit for bit
        assert not torch.equal(z_base[i][~keep], z_trained[i][~keep])
    mask = torch.stack([torch.from_numpy(p.mask) for p in plans])[:, None].expand(-1, 3, -1, -1)
    assert len(x_base) == len(x_trained) > 0
    for a, b in zip(x_base, x_trained):  # the pixel stage's composites
        assert torch.equal(a[~mask], b[~mask])  # the OK image outside M, bit for bit
        assert (a[mask] - b[mask]).abs().max() > 1e-3  # the trained ControlNet's defect inside


RUN_ARGS = ["--batch", "--num", "2", "--steps", "10", "--adapt-iters", "20", "--resolution", "64", "--quiet"]


def run_job(out: Path, controlnet: Path, images: Path, masks: Path, *more):
    from adabldm_engine.cli import main as run_main

    args = [*RUN_ARGS, "--images", images, "--masks", masks, "--controlnet", controlnet, "--out", out, *more]
    result = CliRunner().invoke(run_main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.float64)


@pytest.fixture(scope="module")
def job_inputs(trained, tmp_path_factory):
    """The held-in masks only, and the ControlNet training started from (the baseline)."""
    cfg, report = trained
    root = tmp_path_factory.mktemp("job")
    (root / "masks").mkdir()
    for name in ("000_mask.png", "001_mask.png"):
        shutil.copy(cfg.defect_masks / name, root / "masks" / name)
    initial_controlnet(build_tiny().unet, cfg).save_pretrained(root / "initial")
    return root / "masks", root / "initial"


@pytest.fixture(scope="module")
def reference_runs(trained, job_inputs, tmp_path_factory):
    cfg, report = trained
    masks, initial = job_inputs
    root = tmp_path_factory.mktemp("runs")
    return (run_job(root / "initial", initial, cfg.images, masks),
            run_job(root / "trained", report.out / "controlnet", cfg.images, masks))


def test_trained_controlnet_in_adabldm_run(reference_runs):
    """The run loads RUN_DIR/controlnet with the built-in model; the ControlNet changes the
    images and nothing else (same masks, trimaps, sources); adaptation pulls the
    background toward the source in both runs."""
    initial, trained = reference_runs
    for i in range(2):
        for f in (f"texture/ground_truth/defect/{i:04d}_mask.png", f"extra/defect/{i:04d}_trimap.png",
                  f"extra/defect/{i:04d}_source.png"):
            assert np.array_equal(png(initial / f), png(trained / f)), f
        m = png(trained / f"texture/ground_truth/defect/{i:04d}_mask.png") > 0
        a, b = png(initial / f"texture/test/defect/{i:04d}.png"), png(trained / f"texture/test/defect/{i:04d}.png")
        assert m.any() and np.abs(a - b)[m].max() >= 1  # the defect region changed
    for run in reference_runs:
        for line in map(json.loads, (run / "manifest.jsonl").read_text().splitlines()):
            assert line["quality"]["bg_psnr_after"] > line["quality"]["bg_psnr_before"]
    ids = [json.loads((r / "runs" / "defect.json").read_text())["model_identity"] for r in reference_runs]
    assert ids[0] != ids[1]


@pytest.mark.slow
def test_trained_controlnet_in_adabldm_export(trained, job_inputs, reference_runs, tmp_path):
    """The bundle exported with RUN_DIR/controlnet carries the trained weights: its identity
    is the trained model's, and its ONNX Runtime run reproduces the reference run with the
    trained ControlNet (so it differs from the initial ControlNet's where that one does)."""
    from adabldm_export.cli import main as export_main

    cfg, report = trained
    masks, _ = job_inputs
    initial, reference = reference_runs
    bundle = tmp_path / "bundle"
    exported = CliRunner().invoke(export_main, ["--out", str(bundle), "--controlnet", str(report.out / "controlnet"),
                                                "--resolution", "64", "--batch", "1", "--capture-steps", "5"])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["identity"] == load_models(None, str(report.out / "controlnet")).identity()
    ort = run_job(tmp_path / "ort", report.out / "controlnet", cfg.images, masks,
                  "--bundle", bundle, "--backend", "onnxruntime")
    for i in range(2):
        a, b = png(reference / f"texture/test/defect/{i:04d}.png"), png(ort / f"texture/test/defect/{i:04d}.png")
        assert 10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-12)) >= 40.0
        m = png(ort / f"texture/ground_truth/defect/{i:04d}_mask.png") > 0
        base = png(initial / f"texture/test/defect/{i:04d}.png")
        assert np.abs(b - base)[m].max() >= 1


def test_benchmark_script_on_the_tiny_model(load_benchmark, tmp_path, monkeypatch):
    """benchmarks/bench_train.py end to end on the tiny model (SD size skipped), 64 px."""
    bench = load_benchmark("bench_train")
    monkeypatch.setattr("sys.argv", ["bench_train.py", "--skip-sd", "--resolution", "64", "--tiny-steps", "1",
                                     "--device", "cpu", "--out", str(tmp_path / "train_cpu")])
    bench.main()
    record = json.loads((tmp_path / "train_cpu.json").read_text())
    rows = {(r["precision"], r["batch"]): r for r in record["rows"]}
    assert set(rows) == {("fp32", 1), ("bf16", 1), ("fp32", 4), ("bf16", 4)}
    assert all(r["images_per_s"] > 0 and r["added_rss_bytes"] >= 0 for r in rows.values())
    assert 0 < rows[("fp32", 1)]["vae_encode_flop_per_image"] < rows[("fp32", 1)]["flop_per_image"]
    text = (tmp_path / "train_cpu.md").read_text()
    assert "| tiny | bf16 | 4 | 1 + 1 |" in text and "GPU figures: missing" in text
