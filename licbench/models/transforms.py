"""Analysis and synthesis transforms shared by every learned codec of the suite.

The design follows the MSP notes (shared/notes/msp-lof.md): residual convolution blocks with PReLU,
stride-2 downsampling stages in the encoder and conv + PixelShuffle upsampling in the decoder; no
GDN, no attention. All probability models (MSP and the three baselines) sit between the SAME
transforms so that a comparison measures the probability model only.
"""

from __future__ import annotations

import torch.nn as nn
from compressai.layers import conv3x3, subpel_conv3x3
from torch import Tensor


class ResidualBlock(nn.Module):
    """conv3x3 -> PReLU -> conv3x3, add the input, PReLU (channel count kept)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels),
            nn.PReLU(channels),
            conv3x3(channels, channels),
        )
        self.activation = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.body(x) + x)


class AnalysisTransform(nn.Module):
    """g_a: RGB in [0, 1] (B, in_ch, H, W) -> latent (B, latent_channels, H / stride, W / stride).

    Each stage is a 5x5 stride-2 convolution + PReLU followed by ``res_blocks`` residual blocks;
    a final 3x3 convolution (no activation) maps to the latent channels. H and W must be
    multiples of ``stride`` (= 2**stages).
    """

    def __init__(
        self,
        in_ch: int = 3,
        channels: int = 128,
        latent_channels: int = 128,
        stages: int = 3,
        res_blocks: int = 1,
    ) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"AnalysisTransform: stages must be >= 1, got {stages}")
        layers: list[nn.Module] = []
        stage_in = in_ch
        for _ in range(stages):
            layers += [
                nn.Conv2d(stage_in, channels, kernel_size=5, stride=2, padding=2),
                nn.PReLU(channels),
            ]
            layers += [ResidualBlock(channels) for _ in range(res_blocks)]
            stage_in = channels
        layers.append(conv3x3(channels, latent_channels))
        self.layers = nn.Sequential(*layers)
        self.stride = 2**stages

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SynthesisTransform(nn.Module):
    """g_s, the mirror of :class:`AnalysisTransform`: latent -> RGB (not clamped).

    A 3x3 convolution + PReLU lifts the latent to ``channels``; each stage is ``res_blocks``
    residual blocks then a 3x3 convolution + PixelShuffle(2) upsampling (+ PReLU except after the
    last stage, whose output goes to a final 3x3 convolution to ``out_ch``).
    """

    def __init__(
        self,
        out_ch: int = 3,
        channels: int = 128,
        latent_channels: int = 128,
        stages: int = 3,
        res_blocks: int = 1,
    ) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"SynthesisTransform: stages must be >= 1, got {stages}")
        layers: list[nn.Module] = [conv3x3(latent_channels, channels), nn.PReLU(channels)]
        for _ in range(stages):
            layers += [ResidualBlock(channels) for _ in range(res_blocks)]
            layers += [subpel_conv3x3(channels, channels, 2), nn.PReLU(channels)]
        layers.append(conv3x3(channels, out_ch))
        self.layers = nn.Sequential(*layers)
        self.stride = 2**stages

    def forward(self, y_hat: Tensor) -> Tensor:
        return self.layers(y_hat)
