"""The DDIM step as plain tensor ops on precomputed coefficients.

The reference step (:class:`adabldm_ref.sampler.SchedulerStep`) asks diffusers'
DDIMScheduler for every step, with Python-side indexing by timestep. Here the same maths
(DDIM with eta = 0) reads its coefficients from a :class:`adabldm_ref.sampler.DdimSchedule`
row, so one step is a fixed sequence of tensor ops with no host synchronisation: it can be
captured in a CUDA graph (engine/graphed.py). The blends stay in the one denoising loop,
:func:`adabldm_ref.sampler.sample_blended`.
DDIM: Song et al., arXiv 2010.02502, eq. 12.
"""
from __future__ import annotations

import torch

from adabldm_ref.sampler import EpsFn


def ddim_step(
    eps_fn: EpsFn, z: torch.Tensor, t: torch.Tensor, coef: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CFG eps and the DDIM update (eta 0): returns (z_prev, pred_x0).

    z: (B, 4, h, w) float32; t: () float32 timestep; coef: (4,) row of a DdimSchedule
    (sqrt(a_t), sqrt(1 - a_t), sqrt(a_prev), sqrt(1 - a_prev)).
    """
    sqrt_a, sqrt_1ma, sqrt_a_prev, sqrt_1ma_prev = coef.unbind()
    eps = eps_fn(z, t)
    pred_x0 = (z - sqrt_1ma * eps) / sqrt_a
    z_prev = sqrt_a_prev * pred_x0 + sqrt_1ma_prev * eps
    return z_prev, pred_x0
