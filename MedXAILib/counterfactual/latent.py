"""``latent``: counterfactuals by shifting the latent code of an autoencoder (Latent Shift).

Reference: J. P. Cohen, R. Brooks, S. En, E. Zucker, A. Pareek, M. P. Lungren, A. Chaudhari,
"Gifsplanation via Latent Shift: a simple autoencoder approach to counterfactual generation for
chest X-rays", MIDL 2021, arXiv:2102.09475.

The image is encoded to z0 (the latent mean of a MONAI ``AutoencoderKL``). Latent Shift moves z
along the gradient of the classifier through the decoder, z0 + lambda * df/dz, and increases lambda
until the prediction changes. Here the shift is taken iteratively: each step moves z against the
gradient of goal_weight * goal loss + distance_weight * mean |z - z0|^2, scaled so that the
coordinate with the largest gradient moves by ``step_size`` (the goal weight grows when the search
stalls), until the goal is reached. The step is normalised globally, not per coordinate: a
per-coordinate optimiser such as Adam would move every latent coordinate by about the same amount,
also where the model does not look, and the change would spread over the whole image.

As in the paper, only the change the shift causes is shown: the counterfactual is
x' = x + D(z) - D(z0), so the autoencoder's reconstruction error never enters x', and unchanged
latents give x' = x exactly. x' is kept inside the bounds and the region.

The shipped autoencoder (``Resources/Models/demo_autoencoder.json``,
:mod:`MedXAILib.counterfactual.autoencoder`) was trained on the CT phantoms only: it is a demonstration.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .catalog import LatentParams
from .goals import CounterfactualContext, GoalSearch

__all__ = ["latent"]


def latent(ctx: CounterfactualContext, params: LatentParams) -> torch.Tensor:
    """Search the autoencoder's latent space for a shift whose decoded change reaches the goal.

    Args:
        ctx: input (one channel), bound model, resolved goal, bounds, region, monitor.
        params: see :class:`~MedXAILib.counterfactual.catalog.LatentParams`.

    Returns:
        The counterfactual input (1, 1, I, J, K).

    Raises:
        InputError: the image has more than one channel.
        ModelError: the autoencoder cannot be loaded.
    """
    import numpy as np

    from .autoencoder import load_autoencoder

    x0, monitor = ctx.x, ctx.monitor
    if x0.shape[1] != 1:
        raise InputError(f"the latent generator handles one-channel images; this one has {x0.shape[1]} channels")
    monitor.update(0.0, "Loading the autoencoder")
    net, spec = load_autoencoder(params.autoencoder or None, device=x0.device)
    offset, scale = spec["intensity"]["offset"], spec["intensity"]["scale"]
    trained = spec.get("spacing_mm")
    if trained is not None and not np.allclose(ctx.image.spacing, trained, rtol=0.25):
        ctx.warn(f"the autoencoder was trained at {trained} mm voxels; this image has "
                 f"{np.round(ctx.image.spacing, 3).tolist()} mm, so its latent space may not fit")
    modality = str(ctx.image.meta.get("modality", "")).upper()
    if spec.get("modality") and modality and modality != str(spec["modality"]).upper():
        ctx.warn(f"the autoencoder was trained on {spec['modality']}, this image is {modality}")
    factor = int(spec["downsampling"])
    shape = x0.shape[2:]
    pad = [(-n) % factor for n in shape]
    normalised = (x0 - offset) / scale
    if spec["intensity"].get("clip"):  # the window the autoencoder was trained on
        normalised = normalised.clamp(*spec["intensity"]["clip"])
    if any(pad):  # edge replication to a multiple of the downsampling factor; cropped again below
        normalised = torch.nn.functional.pad(normalised, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    with torch.no_grad():
        z0, _ = net.encode(normalised)
        reference = net.decode(z0)
    crop = (slice(None), slice(None), slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    z = z0.clone()
    search = GoalSearch(ctx, params, label="latent step", progress=(0.05, 0.95))
    x = x0
    for step in range(params.max_steps + 1):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            change = (net.decode(z) - reference)[crop] * scale
            x = ctx.clamp(x0 + change)
            output = ctx.model(x)
            if search.check(step, output):
                break
            loss = search.weighted_goal_loss(output) + params.distance_weight * ((z - z0) ** 2).mean()
            (grad,) = torch.autograd.grad(loss, z)
        with torch.no_grad():
            z = z - params.step_size * grad / (grad.abs().max() + 1e-12)
        search.step_done(step)
    with torch.no_grad():
        shift = float((z - z0).norm())
    search.finish("raise max_steps or step_size, or lower distance_weight", latent_shift_norm=round(shift, 6),
                  autoencoder={"source": spec["source"], "sha256": spec["sha256"]})
    return x.detach()
