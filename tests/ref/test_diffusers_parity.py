"""With blending off, the sampler is plain ControlNet DDIM: it must match diffusers' own
StableDiffusionControlNetPipeline (DDIM scheduler, same initial noise) to float32 precision."""
from __future__ import annotations

import torch
from diffusers import StableDiffusionControlNetPipeline

from adabldm_ref.config import SamplerConfig
from adabldm_ref.models import encode_prompts, make_scheduler
from adabldm_ref.sampler import (
    ControlNetCFG,
    NoiseSource,
    SchedulerStep,
    ddim_schedule,
    sample_blended,
    stepped_scheduler,
)


def test_unblended_sampler_matches_diffusers_controlnet_pipeline(tiny):
    steps, guidance, scale, b = 10, 9.0, 0.8, 2
    prompt, negative = "a brick with a crack", ""
    hint = torch.rand(b, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    z_t = torch.randn(b, 4, 32, 32, generator=torch.Generator().manual_seed(4))

    pipe = StableDiffusionControlNetPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        controlnet=tiny.controlnet, scheduler=make_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        prompt=[prompt] * b, negative_prompt=[negative] * b, image=hint, height=256, width=256,
        num_inference_steps=steps, guidance_scale=guidance, controlnet_conditioning_scale=scale,
        eta=0.0, latents=z_t.clone(), output_type="latent",
    ).images

    cond, uncond = encode_prompts(tiny, [prompt, negative]).split(1)
    ctx = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])
    # diffusers gives the ControlNet the same prompt embeddings as the UNet.
    eps_fn = ControlNetCFG(tiny.unet, tiny.controlnet, ctx, ctx, hint, guidance, scale)
    cfg = SamplerConfig(steps=steps, guidance=guidance, control_scale=scale, blend=False)
    step = SchedulerStep(eps_fn, stepped_scheduler(make_scheduler(), steps))
    ours = sample_blended(step, z_t.clone(), ddim_schedule(make_scheduler(), steps), cfg, None, None, NoiseSource([]))

    err = (ours - expected).abs().max().item()
    print(f"max |ours - diffusers| = {err:.2e}")
    assert err < 1e-5 * max(1.0, expected.abs().max().item()), err
    assert not torch.equal(ours, z_t)  # it really sampled
