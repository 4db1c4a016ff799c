"""The rate-distortion loss and the evaluation of a model on whole images.

Loss (per batch item i with rate point r_i, x in [0, 1]):

    bpp_i  = sum over all latent elements of item i of -log2(likelihood) / (H * W)
    mse:     loss_i = bpp_i + lambda_{r_i} * 255^2 * MSE_i          (MSE over C, H, W)
    ms-ssim: loss_i = bpp_i + lambda_{r_i} * (1 - MS-SSIM_i)
    loss   = mean_i loss_i

The 255^2 factor makes the lambdas those of CompressAI's published models (MSE measured on 8-bit
values), so the default lambdas give comparable rate points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

METRICS = ("mse", "ms-ssim")
# Images (crops) need sides of at least this for pytorch_msssim's 5-scale MS-SSIM, 11-pixel window.
MS_SSIM_MIN_SIDE = 161


def bits_per_item(likelihoods: dict[str, torch.Tensor]) -> torch.Tensor:
    """Estimated code length in bits of each batch item: sum of -log2 likelihood over all latents."""
    return sum(-torch.log2(lik).flatten(1).sum(dim=1) for lik in likelihoods.values())


def rd_terms(
    output: dict, x: torch.Tensor, item_lambdas: torch.Tensor, metric: str, num_pixels: int | None = None
) -> dict[str, torch.Tensor]:
    """Per-item loss, bpp, mse and distortion (see the module doc) of a model output for ``x``.

    ``num_pixels`` is the pixel count the bits are spread over (default H * W of ``x``), so that an
    image padded to the stride is charged per pixel of the original.
    """
    x_hat = output["x_hat"]
    pixels = num_pixels or x.shape[-2] * x.shape[-1]
    bpp = bits_per_item(output["likelihoods"]) / pixels
    mse = (x_hat - x).pow(2).flatten(1).mean(dim=1)
    if metric == "mse":
        distortion = 255.0**2 * mse
    elif metric == "ms-ssim":
        from pytorch_msssim import ms_ssim

        distortion = 1.0 - ms_ssim(x_hat, x, data_range=1.0, size_average=False)
    else:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    return {"loss": bpp + item_lambdas * distortion, "bpp": bpp, "mse": mse, "distortion": distortion}


def psnr(mse: float, peak: float = 1.0) -> float:
    return 10.0 * math.log10(peak**2 / mse) if mse > 0 else math.inf


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom and right of a B x C x H x W tensor to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    pad_bottom = -height % multiple
    pad_right = -width % multiple
    if pad_bottom == 0 and pad_right == 0:
        return x
    return F.pad(x, (0, pad_right, 0, pad_bottom), mode="replicate")


@torch.no_grad()
def evaluate_images(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    lambdas: Sequence[float],
    metric: str,
    device: torch.device | str = "cpu",
) -> list[dict[str, float]]:
    """Per rate point: mean estimated bpp, PSNR (dB, of the 8-bit clamped reconstruction) and loss
    over whole images (3 x H x W in [0, 1]), each padded to the model's stride and cropped back.

    Runs the model in eval mode (rounded latents, as the real codec codes them) and restores the
    previous mode. The rate comes from the likelihoods, not from an entropy coder.
    """
    was_training = model.training
    model.eval()
    results = []
    try:
        for rate_index, lam in enumerate(lambdas):
            sums = {"bpp": 0.0, "psnr": 0.0, "loss": 0.0} | ({"ms_ssim": 0.0} if metric == "ms-ssim" else {})
            for image in images:
                x = image.unsqueeze(0).to(device)
                height, width = x.shape[-2:]
                output = model(pad_to_multiple(x, model.stride), rate_index)
                x_hat = output["x_hat"][..., :height, :width].clamp(0.0, 1.0).mul(255.0).round().div(255.0)
                terms = rd_terms(
                    {"x_hat": x_hat, "likelihoods": output["likelihoods"]},
                    x,
                    torch.tensor([lam], device=x.device),
                    metric,
                    num_pixels=height * width,
                )
                sums["bpp"] += terms["bpp"].item()
                sums["psnr"] += psnr(terms["mse"].item())
                sums["loss"] += terms["loss"].item()
                if metric == "ms-ssim":
                    sums["ms_ssim"] += 1.0 - terms["distortion"].item()
            record = {"rate_index": rate_index, "lambda": float(lam)}
            record.update({k: v / len(images) for k, v in sums.items()})
            results.append(record)
    finally:
        model.train(was_training)
    return results
