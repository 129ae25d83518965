from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from adabldm_ref.models import (
    ModelLoadError,
    build_tiny,
    conditioning_channels,
    encode_prompts,
    load_controlnet,
    load_models,
    load_pretrained,
    save_pretrained,
)


def test_tiny_model_is_seeded_and_of_the_sd_family(tiny):
    assert build_tiny().identity() == tiny.identity()
    assert build_tiny(seed=1).identity() != tiny.identity()
    z = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        x = tiny.vae.decode(z).sample
    assert x.shape == (1, 3, 256, 256)  # latent stride 8
    assert type(tiny.unet).__name__ == "UNet2DConditionModel"
    assert type(tiny.controlnet).__name__ == "ControlNetModel"
    assert type(tiny.text_encoder).__name__ == "CLIPTextModel"


def test_tiny_controlnet_is_not_a_copy_of_the_unet_and_is_not_a_no_op(tiny):
    for conv in tiny.controlnet.controlnet_down_blocks:
        assert conv.weight.abs().sum() > 0  # zero convs were perturbed
    assert not torch.equal(tiny.controlnet.conv_in.weight, tiny.unet.conv_in.weight)
    z = torch.randn(1, 4, 32, 32)
    ctx = encode_prompts(tiny, [""])
    with torch.no_grad():
        outs = []
        for hint in (torch.zeros(1, 3, 256, 256), torch.ones(1, 3, 256, 256)):
            down, mid = tiny.controlnet(z, 500, encoder_hidden_states=ctx, controlnet_cond=hint, return_dict=False)
            outs.append(tiny.unet(z, 500, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                                  mid_block_additional_residual=mid).sample)
    assert (outs[0] - outs[1]).abs().mean() > 1e-3  # the trimap changes the prediction


def test_tokenizer_is_local_and_pads_to_77(tiny):
    ids = tiny.tokenizer(["a bottle with a broken_large", ""], padding="max_length", max_length=77,
                         truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (2, 77)
    assert ids[0, 0] == tiny.tokenizer.bos_token_id and ids[1, 1] == tiny.tokenizer.eos_token_id
    emb = encode_prompts(tiny, ["a brick with a crack", "a brick with a hole"])
    assert emb.shape == (2, 77, 32) and not torch.equal(emb[0], emb[1])


def test_save_and_load_a_diffusers_directory(tiny, tmp_path):
    save_pretrained(tiny, tmp_path / "sd", tmp_path / "cn")
    loaded = load_pretrained(tmp_path / "sd", tmp_path / "cn")
    assert loaded.identity() == tiny.identity()
    assert load_models(str(tmp_path / "sd"), str(tmp_path / "cn")).identity() == tiny.identity()


def test_controlnet_single_safetensors_file(tiny, tmp_path):
    path = tmp_path / "controlnet.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.controlnet.state_dict().items()}, str(path))
    cn = load_controlnet(path, tiny.unet)
    ref = tiny.controlnet.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in cn.state_dict().items())


def test_pickle_checkpoints_need_an_explicit_flag(tiny, tmp_path):
    path = tmp_path / "controlnet.ckpt"
    torch.save(tiny.controlnet.state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"controlnet\.ckpt is a pickle checkpoint .*--allow-pickle"):
        load_controlnet(path, tiny.unet)
    cn = load_controlnet(path, tiny.unet, allow_pickle=True)
    assert torch.equal(cn.conv_in.weight, tiny.controlnet.conv_in.weight)


def test_model_errors_name_the_path(tiny, tmp_path):
    with pytest.raises(ModelLoadError, match="ControlNet not found: .*nope"):
        load_controlnet(tmp_path / "nope", tiny.unet)
    with pytest.raises(ModelLoadError, match="model directory not found"):
        load_pretrained(tmp_path / "missing", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="'unet' folder"):
        load_pretrained(tmp_path / "empty", tmp_path)
    (tmp_path / "cn.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="expected a diffusers directory"):
        load_controlnet(tmp_path / "cn.onnx", tiny.unet)
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="broken.safetensors could not be read"):
        load_controlnet(tmp_path / "broken.safetensors", tiny.unet)
    with pytest.raises(ModelLoadError, match="needs both --model"):
        load_models(str(tmp_path), None)


def test_conditioning_channels_from_either_layout():
    ldm = {f"control_model.input_hint_block.{i}.weight": (c, 3, 3, 3) for i, c in
           zip(range(0, 16, 2), (16, 16, 32, 32, 96, 96, 256, 320))}
    assert conditioning_channels(ldm) == (16, 32, 96, 256)
    diffusers = {"controlnet_cond_embedding.conv_in.weight": (8, 3, 3, 3),
                 "controlnet_cond_embedding.blocks.1.weight": (16, 8, 3, 3),
                 "controlnet_cond_embedding.blocks.3.weight": (32, 16, 3, 3)}
    assert conditioning_channels(diffusers) == (8, 16, 32)
    with pytest.raises(ModelLoadError, match="no ControlNet hint encoder"):
        conditioning_channels({"foo.weight": (1,)})
