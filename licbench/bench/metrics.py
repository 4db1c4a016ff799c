"""Per-image distortion metrics on 8-bit RGB images."""

from __future__ import annotations

import math

import numpy as np

from licbench.colour import luma_bt709

# pytorch-msssim's 5-scale MS-SSIM with an 11-tap window needs the smaller side > (11 - 1) * 2**4.
MS_SSIM_MIN_SIDE = 161


def psnr(reference: np.ndarray, decoded: np.ndarray, peak: float = 255.0) -> float:
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float | None:
    """MS-SSIM on RGB (data range 255); None when the image is too small for five scales."""
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    def as_tensor(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)

    with torch.no_grad():
        return float(_ms_ssim(as_tensor(reference), as_tensor(decoded), data_range=255.0))


def ms_ssim_db(value: float | None) -> float | None:
    """MS-SSIM on the dB scale used for RD curves: -10 log10(1 - MS-SSIM)."""
    if value is None:
        return None
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


def image_metrics(reference: np.ndarray, decoded: np.ndarray) -> dict[str, float | None]:
    """PSNR-RGB, PSNR-Y (BT.709 full-range luma) and MS-SSIM of a decoded image."""
    if reference.shape != decoded.shape:
        raise ValueError(f"decoded image is {decoded.shape}, expected {reference.shape}")
    value = ms_ssim(reference, decoded)
    return {
        "psnr_rgb": psnr(reference, decoded),
        "psnr_y": psnr(luma_bt709(reference), luma_bt709(decoded)),
        "ms_ssim": value,
        "ms_ssim_db": ms_ssim_db(value),
    }
