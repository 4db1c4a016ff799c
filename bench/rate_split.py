"""Where the bits go: MSP's rate per scale of its pyramid against the hyperprior family's split
between the latent y and the side latent z, on real images, for every rate point.

MSP codes the coarsest scale y_S (1/4**S of the elements) with a factorized bottleneck and every
finer scale from its context network; the hyperprior codes all of y from the side latent z. The
table says which part of each model pays for what at each rate, and the PSNR it buys.
Likelihood estimates in eval mode (y_hat = mu + round(y - mu), the values the decoder
reconstructs), not written bitstreams: those are within about 1-2 % (tests/test_models.py).
``--as-trained`` gives the same table for the values training optimises instead (train mode:
likelihoods of y + uniform noise, one draw, seeded): the gap between the two tables per scale is
the part of the rate that training does not see.
Each rate point also gets the PSNR of g_s on the latent NOT quantized (the transforms' ceiling): when
the decoded PSNR is close to it, quantization is not what limits the quality, the transforms are.

    python bench/rate_split.py                                   # msp-base-small, hyperprior-small
    python bench/rate_split.py --models msp-extra-small,checkerboard-small --images 24
    python bench/rate_split.py --as-trained                      # the rates training sees
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from licbench.models.zoo import resolve_checkpoint
from licbench.training.checkpoint import load_model
from licbench.training.data import image_tensor
from licbench.training.evaluate import pad_to_multiple, psnr

KODAK = Path(os.environ.get("LICBENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "kodak"


def scale_of_positions(height: int, width: int, scales: int) -> torch.Tensor:
    """(height, width) map of the MSP scale each latent position is coded at (0 = finest)."""
    rows = torch.arange(height)[:, None]
    cols = torch.arange(width)[None, :]
    level = torch.zeros(height, width, dtype=torch.long)
    for scale in range(1, scales + 1):
        step = 2**scale
        level[(rows % step == step - 1) & (cols % step == step - 1)] = scale
    return level


@torch.no_grad()
def rate_split(
    model: torch.nn.Module, pixels: torch.Tensor, rate_index: int
) -> tuple[dict[str, float], float, float]:
    """({component: bits per pixel}, PSNR-RGB in dB, PSNR-RGB of the unquantized latent) of one
    image (1 x 3 x H x W in [0, 1]) at one rate point."""
    height, width = pixels.shape[-2:]
    padded = pad_to_multiple(pixels, model.stride)
    out = model(padded, rate_index)
    unquantized = model.reconstruct(model.analyze(padded, rate_index), rate_index)
    split: dict[str, float] = {}
    profile = getattr(model.latent_codec, "profile", None)
    for name, likelihoods in out["likelihoods"].items():
        bits = -torch.log2(likelihoods).sum(dim=(0, 1))  # per latent position
        if profile is not None and name == "y":
            level = scale_of_positions(*bits.shape, profile.scales)
            for scale in range(profile.scales + 1):
                part = "bottleneck" if scale == profile.scales else "context"
                split[f"y{scale} ({part})"] = float(bits[level == scale].sum()) / (height * width)
        else:
            split[name] = float(bits.sum()) / (height * width)
    def image_psnr(x_hat: torch.Tensor) -> float:
        return psnr(F.mse_loss(x_hat.clamp(0, 1)[..., :height, :width], pixels).item())

    return split, image_psnr(out["x_hat"]), image_psnr(unquantized)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="msp-base-small,hyperprior-small", help="zoo names or checkpoint files")
    parser.add_argument("--images", type=int, default=4, help="first N Kodak images (default 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--as-trained", action="store_true", help="train-mode likelihoods (noisy values), not eval mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(KODAK.glob("*.png"))[: args.images]
    if not files:
        raise SystemExit(f"no Kodak images in {KODAK} (set LICBENCH_DATA)")
    images = [image_tensor(path)[None] for path in files]  # decoded once, used by every model and rate
    mode = "train mode: y + uniform noise" if args.as_trained else "eval mode: rounded values"
    print(f"{len(images)} Kodak images; mean bits per pixel by component (estimates, {mode}) and PSNR-RGB")
    for name in args.models.split(","):
        path, digest = resolve_checkpoint(name)
        model = load_model(path).train(args.as_trained)
        torch.manual_seed(0)
        print(f"\n{name} (sha256 {digest[:12]})")
        for rate_index in range(model.n_rates):
            totals: dict[str, float] = {}
            psnrs, ceilings = [], []
            for image in images:
                split, psnr, ceiling = rate_split(model, image, rate_index)
                for part, bpp in split.items():
                    totals[part] = totals.get(part, 0.0) + bpp / len(images)
                psnrs.append(psnr)
                ceilings.append(ceiling)
            total = sum(totals.values())
            parts = "  ".join(f"{part} {bpp:.4f} ({100 * bpp / total:.0f} %)" for part, bpp in totals.items())
            print(
                f"  rate {rate_index}: {total:.4f} bpp {sum(psnrs) / len(psnrs):.2f} dB"
                f" (unquantized latent {sum(ceilings) / len(ceilings):.2f} dB)  {parts}"
            )


if __name__ == "__main__":
    main()
