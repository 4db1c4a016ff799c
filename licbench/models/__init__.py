"""Learned codecs: the MSP probability model and three baselines around the SAME transforms.

``build_model(model, profile, transforms, n_rates, **overrides)`` is the one entry point; the
returned :class:`LearnedCodec` keeps in ``.config`` the exact keyword arguments that rebuild it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from compressai.latent_codecs import LatentCodec

from licbench.models.codec import BitstreamError, LearnedCodec
from licbench.models.transforms import AnalysisTransform, SynthesisTransform

__all__ = [
    "MODEL_NAMES",
    "TRANSFORM_CONFIGS",
    "BitstreamError",
    "LearnedCodec",
    "build_model",
]

MODEL_NAMES = ("msp", "checkerboard", "autoregressive", "hyperprior")

# "small" is what CPU training can afford; "paper" is the authors' transform size.
TRANSFORM_CONFIGS: dict[str, dict[str, int]] = {
    "small": dict(channels=64, latent_channels=96, stages=3),
    "paper": dict(channels=128, latent_channels=128, stages=3),
}

_TRANSFORM_KEYS = ("channels", "latent_channels", "stages")
_MSP_KEYS = ("scales", "block", "seed_channels", "hidden_channels", "res_blocks")
_QUANTIZER_MODELS = ("msp", "hyperprior")


def _latent_codec(
    model: str, profile: str | None, latent_channels: int, hyper_channels: int, knobs: dict[str, Any]
) -> LatentCodec:
    # Imported here so that each probability model stays an independent module.
    if model == "msp":
        from licbench.models.msp import PROFILES, MSPLatentCodec

        if profile not in PROFILES:
            raise ValueError(f"unknown MSP profile {profile!r}; choose from {sorted(PROFILES)}")
        quantizer = knobs.pop("quantizer", "noise")
        rate = knobs.pop("rate", "noisy")
        return MSPLatentCodec(
            latent_channels, dataclasses.replace(PROFILES[profile], **knobs), quantizer=quantizer, rate=rate
        )
    if model == "hyperprior":
        from licbench.models.hyperprior import HyperpriorCodec

        return HyperpriorCodec(latent_channels, hyper_channels, **knobs)
    if model == "checkerboard":
        from licbench.models.checkerboard import CheckerboardCodec

        return CheckerboardCodec(latent_channels, hyper_channels)
    from licbench.models.autoregressive import AutoregressiveCodec

    return AutoregressiveCodec(latent_channels, hyper_channels)


def build_model(
    model: str,
    profile: str | None = None,
    transforms: str = "small",
    n_rates: int = 6,
    **overrides: Any,
) -> LearnedCodec:
    """Build a learned codec with random weights.

    model: one of :data:`MODEL_NAMES`. profile: MSP profile ("base" when omitted; only for msp).
    transforms: a key of :data:`TRANSFORM_CONFIGS`. overrides: transform sizes (channels,
    latent_channels, stages), MSP profile knobs (scales, block, seed_channels, hidden_channels,
    res_blocks), ``quantizer`` ("noise" or "ste", msp and hyperprior only) and ``rate`` ("noisy" or
    "rounded", the training rate term, msp only).
    """
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; choose from {MODEL_NAMES}")
    if transforms not in TRANSFORM_CONFIGS:
        raise ValueError(f"unknown transforms {transforms!r}; choose from {sorted(TRANSFORM_CONFIGS)}")
    if model == "msp":
        profile = profile or "base"
    elif profile is not None:
        raise ValueError(f"profile is only for msp, not for {model!r}")
    allowed = _TRANSFORM_KEYS + (_MSP_KEYS + ("rate",) if model == "msp" else ()) + (
        ("quantizer",) if model in _QUANTIZER_MODELS else ()
    )
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown overrides {unknown} for {model!r}; allowed: {allowed}")

    sizes = dict(TRANSFORM_CONFIGS[transforms])
    sizes.update({k: overrides[k] for k in _TRANSFORM_KEYS if k in overrides})
    knobs = {k: v for k, v in overrides.items() if k not in _TRANSFORM_KEYS}
    latent_codec = _latent_codec(model, profile, sizes["latent_channels"], sizes["channels"], knobs)
    config = dict(model=model, profile=profile, transforms=transforms, n_rates=n_rates, **overrides)
    return LearnedCodec(
        AnalysisTransform(**sizes),
        SynthesisTransform(**sizes),
        latent_codec,
        latent_channels=sizes["latent_channels"],
        n_rates=n_rates,
        config=config,
    )
