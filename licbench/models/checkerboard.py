"""Checkerboard context model (He et al., CVPR 2021) on the mean-scale hyperprior.

Built from CompressAI's CheckerboardLatentCodec: the anchors (half of the positions, a
checkerboard) are decoded from the hyperprior alone, then the non-anchors with a 5x5 checkerboard
masked context over the decoded anchors: two sequential rounds for any image size.
"""

from __future__ import annotations

from compressai.latent_codecs import CheckerboardLatentCodec, GaussianConditionalLatentCodec
from compressai.layers import CheckerboardMaskedConv2d

from licbench.models.entropy import IndexedGaussianConditional
from licbench.models.hyperprior import HyperpriorCodec, context_entropy_parameters


class CheckerboardCodec(HyperpriorCodec):
    """Hyperprior + two-pass checkerboard context for a latent of ``latent_channels`` channels.

    Training uses CompressAI's "twopass" forward (the decoder's two passes, straight-through
    rounding of the anchors). Latent width must be even (guaranteed by ``latent_stride``).
    """

    def __init__(self, latent_channels: int, hyper_channels: int) -> None:
        y_codec = CheckerboardLatentCodec(
            latent_codec={
                "y": GaussianConditionalLatentCodec(
                    gaussian_conditional=IndexedGaussianConditional(), quantizer="ste"
                )
            },
            entropy_parameters=context_entropy_parameters(latent_channels),
            context_prediction=CheckerboardMaskedConv2d(
                latent_channels, 2 * latent_channels, kernel_size=5, padding=2
            ),
            forward_method="twopass",
        )
        super().__init__(latent_channels, hyper_channels, y_codec=y_codec)
        self.latent_channels = latent_channels

    def sequential_passes(self, latent_height: int, latent_width: int) -> int:
        """Two rounds: anchors, then non-anchors."""
        return 2

    def _y_shape(self, latent_height: int, latent_width: int) -> tuple[int, ...]:
        return (self.latent_channels, latent_height, latent_width)
