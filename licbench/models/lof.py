"""Latent overfitting (LOF): optimise the latent of ONE image for its rate-distortion cost.

Our reading of Zhang et al. (shared/notes/msp-lof.md, "LOF"): every network stays frozen; the
encoder starts from ``y = g_a(x) * g_r`` and runs Adam on y itself to lower
``bpp + lambda * 255^2 * MSE`` through the whole model (probability model and g_s). The gradient
comes from the latent codec's TRAINING forward with the straight-through quantizer (rounded values
forward, identity gradient; likelihoods of the noisy values) wherever the latent codec has that
option, i.e. for MSP and the hyperprior family's y. That proxy is not the real cost, so the
search is greedy: every ``check_every`` steps it measures the TRUE cost of the current latent
(rounded as the coder rounds it, its exact discrete likelihoods, the clamped 8-bit reconstruction)
and keeps the best latent seen, the initial one included. LOF can therefore never make an image's
true cost worse than plain encoding, and the decoder is unchanged: it only sees a different latent.

Works with MSP, the hyperprior and the checkerboard model, so that LOF's gain can be compared
across probability models on equal terms. Not with the serial autoregressive model: its parallel
estimate is not what its coder writes (``estimate_matches_coder``), so the true cost would be wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from licbench.models.deadline import check_deadline
from licbench.training.evaluate import bits_per_item


@dataclass(frozen=True)
class LatentOverfitting:
    """The knobs of an LOF search (plain data): Adam steps on the latent, their learning rate
    (latent units per step), and how often the true cost is measured. The defaults live with the
    codec adapters' settings (``lof_iterations``, ``lof_lr``, ``lof_check_every``)."""

    iterations: int
    learning_rate: float
    check_every: int

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.check_every < 1 or not self.learning_rate > 0:
            raise ValueError(f"invalid latent-overfitting settings {self}")


def _cost(
    model: Any, y: Tensor, x: Tensor, rate_index: int, lmbda: float, height: int, width: int, true: bool
) -> tuple[Tensor, float, float]:
    """(RD cost, bpp, MSE) of latent ``y`` for the top-left ``height`` x ``width`` pixels of ``x``.

    true=False: the training proxy (differentiable). true=True: the latent rounded as the coder
    rounds it, its exact discrete likelihoods (which the coder's 64-scale tables approximate: the
    real streams were within 9 % of this bpp on Kodak, headers included) and the 8-bit decoded image.
    """
    model.latent_codec.train(not true)
    output = model.latent_codec(y)
    x_hat = model.reconstruct(output["y_hat"], rate_index)
    if true:
        x_hat = x_hat.clamp(0, 1).mul(255).round().div(255)
    bpp = bits_per_item(output["likelihoods"]).sum() / (height * width)
    mse = (x_hat - x)[..., :height, :width].pow(2).mean()
    return bpp + lmbda * 255.0**2 * mse, bpp.item(), mse.item()


def overfit_latent(
    model: Any,
    x: Tensor,
    rate_index: int,
    lmbda: float,
    settings: LatentOverfitting,
    height: int | None = None,
    width: int | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """The best latent found for image ``x`` (1, 3, H, W), padded to the model stride, whose real
    content is its top-left ``height`` x ``width`` pixels (default: all of it).

    Returns (latent to code, record): the record gives the true cost, bpp and PSNR before and after,
    and the iteration whose latent was kept (0 = the plain encoder's).
    """
    if x.shape[0] != 1:
        raise ValueError("latent overfitting works on one image at a time")
    if not getattr(model.latent_codec, "estimate_matches_coder", False):
        raise ValueError(
            f"latent overfitting needs a probability model whose parallel estimate is what its coder "
            f"writes; {type(model.latent_codec).__name__}'s is not"
        )
    height = height or x.shape[-2]
    width = width or x.shape[-1]
    was_training = model.latent_codec.training
    parameters = list(model.parameters())
    frozen = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    # The straight-through proxy for every latent codec that offers one (MSP, the hyperprior
    # family's Gaussian y): the same proxy for every probability model, whatever it was trained with.
    quantizers = {m: m.quantizer for m in model.latent_codec.modules() if getattr(m, "quantizer", None) in ("noise", "ste")}
    for m in quantizers:
        m.quantizer = "ste"
    try:
        with torch.no_grad():
            y_start = model.analyze(x, rate_index)
            start_cost, start_bpp, start_mse = _cost(model, y_start, x, rate_index, lmbda, height, width, True)
        best = (float(start_cost), 0, y_start, start_bpp, start_mse)
        y = y_start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([y], lr=settings.learning_rate)
        with torch.enable_grad():
            for iteration in range(1, settings.iterations + 1):
                check_deadline()
                optimizer.zero_grad(set_to_none=True)
                proxy, _, _ = _cost(model, y, x, rate_index, lmbda, height, width, False)
                proxy.backward()
                optimizer.step()
                if iteration % settings.check_every == 0 or iteration == settings.iterations:
                    with torch.no_grad():
                        cost, bpp, mse = _cost(model, y, x, rate_index, lmbda, height, width, True)
                    if float(cost) < best[0]:
                        best = (float(cost), iteration, y.detach().clone(), bpp, mse)
    finally:
        for m, quantizer in quantizers.items():
            m.quantizer = quantizer
        for p, requires_grad in zip(parameters, frozen):
            p.requires_grad_(requires_grad)
        model.latent_codec.train(was_training)
    cost, iteration, y_best, bpp, mse = best
    record = {
        "lof_iterations": settings.iterations,
        "lof_kept_iteration": iteration,
        "lof_cost_before": round(float(start_cost), 5),
        "lof_cost_after": round(cost, 5),
        "lof_estimated_bpp_before": round(start_bpp, 5),
        "lof_estimated_bpp_after": round(bpp, 5),
        "lof_psnr_before": round(-10 * math.log10(max(start_mse, 1e-12)), 3),
        "lof_psnr_after": round(-10 * math.log10(max(mse, 1e-12)), 3),
    }
    return y_best, record
