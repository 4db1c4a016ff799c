"""Mean-scale hyperprior (Minnen et al. 2018 without context), built from CompressAI's latent codecs.

It is also the base of the two context-model baselines (checkerboard, autoregressive): they share
its hyper transforms and side latent z and only change how y is coded.

Sequential passes (see :meth:`HyperpriorCodec.sequential_passes`): the number of entropy-decoding
rounds that must run one after the other to decode the latent ``y``, each round being "run the
probability networks on everything decoded so far, then decode one group of y". The side latent z is
decoded in one fully parallel round before y; it is not part of y and is not counted (this favours
the hyperprior family by one round against MSP, whose coarsest scale is part of y and is counted).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
    LatentCodec,
)
from compressai.models.utils import conv, deconv

from licbench.models.entropy import IndexedGaussianConditional, check_rans_stream


def hyper_analysis(latent_channels: int, hyper_channels: int) -> nn.Sequential:
    """h_a of Minnen 2018: y (M) -> z (N) at 1/4 of the latent resolution."""
    return nn.Sequential(
        conv(latent_channels, hyper_channels, kernel_size=3, stride=1),
        nn.LeakyReLU(inplace=True),
        conv(hyper_channels, hyper_channels),
        nn.LeakyReLU(inplace=True),
        conv(hyper_channels, hyper_channels),
    )


def hyper_synthesis(latent_channels: int, hyper_channels: int) -> nn.Sequential:
    """h_s of Minnen 2018: z_hat (N) -> 2M side parameters at the latent resolution."""
    return nn.Sequential(
        deconv(hyper_channels, latent_channels),
        nn.LeakyReLU(inplace=True),
        deconv(latent_channels, latent_channels * 3 // 2),
        nn.LeakyReLU(inplace=True),
        conv(latent_channels * 3 // 2, latent_channels * 2, kernel_size=3, stride=1),
    )


def context_entropy_parameters(latent_channels: int) -> nn.Sequential:
    """Minnen 2018's entropy-parameters network (1x1 convolutions, so it is pointwise):
    concat[2M side parameters, 2M context features] -> 2M (scales, means)."""
    m = latent_channels
    return nn.Sequential(
        nn.Conv2d(m * 12 // 3, m * 10 // 3, 1),
        nn.LeakyReLU(inplace=True),
        nn.Conv2d(m * 10 // 3, m * 8 // 3, 1),
        nn.LeakyReLU(inplace=True),
        nn.Conv2d(m * 8 // 3, m * 6 // 3, 1),
    )


class HyperpriorCodec(HyperpriorLatentCodec):
    """Mean-scale hyperprior latent codec; ``y_codec`` replaces the context-free Gaussian coder of y.

    The side parameters from h_s (2M channels) go to ``y_codec``; by default they ARE the Gaussian
    (scales, means) of y (Minnen 2018 without context). Latent height and width must be multiples
    of :attr:`latent_stride` (h_a downsamples twice).
    """

    latent_stride = 4
    # The training-free forward (eval mode) rounds y around the same means and reconstructs the same
    # y_hat as the coder: what latent overfitting (licbench.models.lof) measures its true cost with.
    estimate_matches_coder = True

    def __init__(
        self,
        latent_channels: int,
        hyper_channels: int,
        y_codec: LatentCodec | None = None,
        quantizer: str = "noise",
    ) -> None:
        hyper = HyperLatentCodec(
            entropy_bottleneck=EntropyBottleneck(hyper_channels),
            h_a=hyper_analysis(latent_channels, hyper_channels),
            h_s=hyper_synthesis(latent_channels, hyper_channels),
        )
        if y_codec is None:
            y_codec = GaussianConditionalLatentCodec(
                gaussian_conditional=IndexedGaussianConditional(), quantizer=quantizer
            )
        super().__init__(latent_codec={"y": y_codec, "hyper": hyper})

    def decompress(
        self, strings: list[list[bytes]], shape: dict[str, Any], **kwargs: Any
    ) -> dict[str, Any]:
        # compressai's rANS decoder reads out of bounds on streams that cannot be valid.
        for stream in strings:
            for string in stream:
                check_rans_stream(string, "hyperprior-family stream")
        return super().decompress(strings, shape, **kwargs)

    def sequential_passes(self, latent_height: int, latent_width: int) -> int:
        """One round: h_s on z_hat gives the parameters of every element of y at once."""
        return 1

    def shape_for_latent(self, latent_height: int, latent_width: int) -> dict[str, tuple[int, ...]]:
        """The ``shape`` argument ``decompress`` needs for a latent of that size."""
        stride = self.latent_stride
        return {
            "y": self._y_shape(latent_height, latent_width),
            "hyper": (latent_height // stride, latent_width // stride),
        }

    def _y_shape(self, latent_height: int, latent_width: int) -> tuple[int, ...]:
        return (latent_height, latent_width)
