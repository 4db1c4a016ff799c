"""MSP: the multi-scale progressive probability model (shared/notes/msp-lof.md), as a LatentCodec.

Scale pyramid. ``y_0 = y`` and ``y_{s+1} = y_s[:, :, 1::2, 1::2]`` (the bottom-right element of
every 2x2 block), ``S = profile.scales`` times; a latent of size h x w gives scale sizes
``(h // 2**s, w // 2**s)``. Every element of y lives at exactly one scale and is coded once.

Coding order. The coarsest scale ``y_S`` is coded with a factorized entropy bottleneck around its
learned medians. Then, from scale S-1 down to 0:

1. The "mixed" tensor Y is the decoded coarser scale upsampled x2 (nearest neighbour) and
   replicate-padded by one row / column where the finer size is odd. The mask M (C channels) is 1
   at the positions known from the coarser scale, ``[1::2, 1::2]``, 0 elsewhere.
2. The hidden state H (F channels) is zero at the first decoded scale; between scales it is
   upsampled by conv3x3(F -> 4F) + PixelShuffle(2) and replicate-padded the same way.
3. For each group in a fixed order, ONE shared CNN maps concat[Y, M, H] to a new H and a Gaussian
   (mean, scale) for every element; the group's elements are coded with their parameters,
   written into Y, and M is set to 1 there. Groups are spatial phase x channel group: phases are
   the unknown positions of a 2x2 block, order (0,0), (0,1), (1,0), or of a 2x4 block, order (1,2),
   (1,0), (0,3), (0,1), (0,2), (0,0) (a phase (r, c) is every position with row % 2 == r and
   col % block_width == c); channel groups are the k seed channels one at a time, then channels
   k..C-1 together.

Sequential passes. ``S x phases x (k + 1)`` context-network passes (27 for base, 120 for extra),
plus ONE for the bottleneck round of y_S, which is part of y:
``MSPProfile.sequential_passes = scales * len(phases) * (seed_channels + 1) + 1``, the same for
every image size. (Scales that are empty for a tiny latent are skipped by encoder and decoder
alike; the count is then an upper bound.)

Bit-exactness. The training forward, the encoder and the decoder all run the SAME loop
(:meth:`MSPLatentCodec._progressive`); only the per-group "coder" differs (estimate likelihoods,
write symbols, read symbols). The encoder therefore makes exactly the network calls the decoder
makes on exactly the same inputs, and the decoder's y_hat equals the encoder's bit for bit.
Compression works one image at a time so that batch size cannot change the arithmetic.

Bitstream. ``strings = [[gaussian_stream per image], [bottleneck_stream per image]]``: every
Gaussian-coded group of an image goes into one rANS stream (compressai.ans.BufferedRansEncoder,
16-bit CDFs over the 64 log-spaced scales from 0.11 to 256, tail mass 1e-9), the coarsest scale
into the entropy bottleneck's own stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import LatentCodec
from compressai.layers import conv3x3, subpel_conv3x3
from compressai.ops import quantize_ste
from torch import Tensor

from licbench.models.deadline import check_deadline
from licbench.models.entropy import IndexedGaussianConditional, check_rans_stream, coder_tables
from licbench.models.transforms import ResidualBlock

# Unknown phases (row, col) of a block, in coding order; the known ones, (1,1) [and (1,3)], come
# from the coarser scale.
BLOCK_PHASES: dict[str, tuple[tuple[int, int], ...]] = {
    "2x2": ((0, 0), (0, 1), (1, 0)),
    "2x4": ((1, 2), (1, 0), (0, 3), (0, 1), (0, 2), (0, 0)),
}
BLOCK_SHAPES: dict[str, tuple[int, int]] = {"2x2": (2, 2), "2x4": (2, 4)}

# Selects the elements of one group: (batch, channels, rows, cols) slices.
Selection = tuple[slice, slice, slice, slice]


@dataclass(frozen=True)
class MSPProfile:
    """The knobs of an MSP profile (plain data)."""

    scales: int
    block: str
    seed_channels: int
    hidden_channels: int
    res_blocks: int = 5

    def __post_init__(self) -> None:
        if self.block not in BLOCK_PHASES:
            raise ValueError(f"MSP block must be one of {sorted(BLOCK_PHASES)}, got {self.block!r}")
        if self.scales < 1 or self.seed_channels < 0 or self.hidden_channels < 1 or self.res_blocks < 0:
            raise ValueError(f"invalid MSP profile {self}")

    @property
    def phases(self) -> tuple[tuple[int, int], ...]:
        return BLOCK_PHASES[self.block]

    @property
    def context_passes(self) -> int:
        """Context-network passes: scales x phases x (seed channels + 1)."""
        return self.scales * len(self.phases) * (self.seed_channels + 1)

    @property
    def sequential_passes(self) -> int:
        """Sequential decoding rounds: the context passes + 1 for the bottleneck of y_S."""
        return self.context_passes + 1


PROFILES: dict[str, MSPProfile] = {
    "base": MSPProfile(scales=3, block="2x2", seed_channels=2, hidden_channels=64, res_blocks=5),
    "extra": MSPProfile(scales=4, block="2x4", seed_channels=4, hidden_channels=128, res_blocks=5),
}


class ContextNetwork(nn.Module):
    """The one CNN shared by all steps and scales: concat[Y, M, H] -> (new H, scales, means).

    conv3x3 -> PReLU -> residual blocks -> conv3x3 giving the new H (no activation); a conv3x3 on H
    gives the 2C Gaussian parameters.
    """

    def __init__(self, latent_channels: int, hidden_channels: int, res_blocks: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            conv3x3(2 * latent_channels + hidden_channels, hidden_channels),
            nn.PReLU(hidden_channels),
            *[ResidualBlock(hidden_channels) for _ in range(res_blocks)],
            conv3x3(hidden_channels, hidden_channels),
        )
        self.gaussian_head = conv3x3(hidden_channels, 2 * latent_channels)

    def forward(self, mixed: Tensor, mask: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden = self.trunk(torch.cat([mixed, mask.expand_as(mixed), hidden], dim=1))
        scales, means = self.gaussian_head(hidden).chunk(2, dim=1)
        return hidden, scales, means


def _is_empty(x: Tensor) -> bool:
    return x.shape[-2] == 0 or x.shape[-1] == 0


def pad_to(x: Tensor, height: int, width: int) -> Tensor:
    """Replicate-pad the bottom / right of ``x`` to (height, width): the extra row / column of an
    odd-sized finer scale."""
    pad_rows, pad_cols = height - x.shape[-2], width - x.shape[-1]
    if pad_rows or pad_cols:
        x = F.pad(x, (0, pad_cols, 0, pad_rows), mode="replicate")
    return x


def upsample_to(x: Tensor, height: int, width: int) -> Tensor:
    """Nearest-neighbour x2 upsampling padded to (height, width); zeros if ``x`` is empty (a
    coarser scale of a latent side of 1 has no elements)."""
    if _is_empty(x):
        return x.new_zeros(*x.shape[:-2], height, width)
    return pad_to(F.interpolate(x, scale_factor=2, mode="nearest"), height, width)


def scale_sizes(height: int, width: int, scales: int) -> list[tuple[int, int]]:
    """Sizes of y_0 .. y_S for a latent of that size."""
    return [(height >> s, width >> s) for s in range(scales + 1)]


class MSPLatentCodec(LatentCodec):
    """The MSP probability model on a latent of ``latent_channels`` channels (see the module doc).

    ``quantizer`` (training only): "noise" feeds y + uniform noise forward, "ste" feeds
    mu + round(y - mu) with a straight-through gradient. In eval mode both give mu + round(y - mu),
    the values the decoder reconstructs.

    ``rate`` (training only): "noisy" takes the likelihoods of y + uniform noise (Balle et al.'s
    proxy); "rounded" those of mu + round(y - mu), the rate the coder pays, with a straight-through
    gradient for the means (TRAINING.md, "Noisy latents": the noisy proxy charges up to 7x the real
    rate at MSP's finest scale, for elements that round onto their mean).
    """

    latent_stride = 1  # odd latent sizes are handled by the scale pyramid itself
    estimate_matches_coder = True  # one loop for estimation and coding (module doc)

    def __init__(
        self, latent_channels: int, profile: MSPProfile, quantizer: str = "noise", rate: str = "noisy"
    ) -> None:
        super().__init__()
        if quantizer not in ("noise", "ste"):
            raise ValueError(f"quantizer must be 'noise' or 'ste', got {quantizer!r}")
        if rate not in ("noisy", "rounded"):
            raise ValueError(f"rate must be 'noisy' or 'rounded', got {rate!r}")
        if profile.seed_channels >= latent_channels:
            raise ValueError(
                f"seed_channels ({profile.seed_channels}) must be below "
                f"latent_channels ({latent_channels})"
            )
        self.profile = profile
        self.latent_channels = latent_channels
        self.quantizer = quantizer
        self.rate = rate
        self.entropy_bottleneck = EntropyBottleneck(latent_channels)
        self.gaussian_conditional = IndexedGaussianConditional()
        self.context = ContextNetwork(latent_channels, profile.hidden_channels, profile.res_blocks)
        self.hidden_upsample = subpel_conv3x3(profile.hidden_channels, profile.hidden_channels, 2)
        seeds = profile.seed_channels
        self.channel_groups = [(c, c + 1) for c in range(seeds)] + [(seeds, latent_channels)]

    # -- the one progressive loop ------------------------------------------------------------
    def _groups(self, height: int, width: int) -> list[Selection]:
        """The groups of one scale in coding order."""
        block_rows, block_cols = BLOCK_SHAPES[self.profile.block]
        return [
            (slice(None), slice(c0, c1), slice(row, height, block_rows), slice(col, width, block_cols))
            for row, col in self.profile.phases
            for c0, c1 in self.channel_groups
        ]

    def _progressive(
        self, coder: _GroupCoder, batch: int, height: int, width: int
    ) -> tuple[Tensor, Tensor | None]:
        """Run the MSP decoding order; returns y_hat and (when the coder gives them) likelihoods.

        Likelihoods are assembled like y_hat: each element's value sits at its position in y.
        """
        sizes = scale_sizes(height, width, self.profile.scales)
        mixed, likelihoods = coder.bottleneck(sizes[-1])
        hidden: Tensor | None = None
        for scale in reversed(range(self.profile.scales)):
            scale_height, scale_width = sizes[scale]
            mixed = upsample_to(mixed, scale_height, scale_width)
            if likelihoods is not None:
                likelihoods = upsample_to(likelihoods, scale_height, scale_width)
            if hidden is None or _is_empty(hidden):
                hidden = mixed.new_zeros(batch, self.profile.hidden_channels, scale_height, scale_width)
            else:
                hidden = pad_to(self.hidden_upsample(hidden), scale_height, scale_width)
            if scale_height == 0 or scale_width == 0:
                continue  # nothing to code at an empty scale (tiny latents only)
            known = mixed.new_zeros(1, self.latent_channels, scale_height, scale_width)
            known[:, :, 1::2, 1::2] = 1
            for group in self._groups(scale_height, scale_width):
                check_deadline()
                hidden, scales, means = self.context(mixed, known, hidden)
                values, group_likelihoods = coder.group(scale, group, scales[group], means[group])
                mixed = _written(mixed, group, values)
                if likelihoods is not None:
                    likelihoods = _written(likelihoods, group, group_likelihoods)
                known = _written(known, group, 1.0)
        return mixed, likelihoods

    # -- LatentCodec API -----------------------------------------------------------------
    def forward(self, y: Tensor) -> dict[str, Any]:
        """{"likelihoods": {"y": one likelihood per element of y}, "y_hat": ...}."""
        coder = _Estimator(self, y)
        y_hat, likelihoods = self._progressive(coder, y.shape[0], *y.shape[-2:])
        return {"likelihoods": {"y": likelihoods}, "y_hat": y_hat}

    def compress(self, y: Tensor) -> dict[str, Any]:
        gaussian_strings, bottleneck_strings, y_hats = [], [], []
        for image_latent in y.split(1):
            coder = _Encoder(self, image_latent)
            y_hat, _ = self._progressive(coder, 1, *y.shape[-2:])
            gaussian_string, bottleneck_string = coder.finish()
            gaussian_strings.append(gaussian_string)
            bottleneck_strings.append(bottleneck_string)
            y_hats.append(y_hat)
        return {
            "strings": [gaussian_strings, bottleneck_strings],
            "shape": tuple(y.shape[-2:]),
            "y_hat": torch.cat(y_hats),
        }

    def decompress(
        self, strings: list[list[bytes]], shape: tuple[int, int], **kwargs: Any
    ) -> dict[str, Any]:
        if len(strings) != 2 or len(strings[0]) != len(strings[1]):
            raise ValueError("MSP expects [gaussian strings, bottleneck strings] of equal length")
        height, width = shape
        if not (0 < height <= 65535 and 0 < width <= 65535):
            raise ValueError(f"invalid latent size {height}x{width}")
        y_hats = []
        for gaussian_string, bottleneck_string in zip(*strings):
            coder = _Decoder(self, gaussian_string, bottleneck_string)
            y_hat, _ = self._progressive(coder, 1, height, width)
            y_hats.append(y_hat)
        return {"y_hat": torch.cat(y_hats)}

    def sequential_passes(self, latent_height: int, latent_width: int) -> int:
        """Fixed for any size: :attr:`MSPProfile.sequential_passes`."""
        return self.profile.sequential_passes

    def shape_for_latent(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        return (latent_height, latent_width)


def _written(target: Tensor, group: Selection, values: Tensor | float) -> Tensor:
    """``target`` with ``values`` written at ``group``: a copy when autograd records, so that
    tensors saved by earlier passes are not modified; in place otherwise (coding)."""
    result = target.clone() if torch.is_grad_enabled() else target
    result[group] = values
    return result


# -- per-group coders: what differs between training, encoding and decoding -----------------
class _GroupCoder:
    def bottleneck(self, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        """Code the coarsest scale; returns its y_hat and likelihoods (or None)."""
        raise NotImplementedError

    def group(
        self, scale: int, group: Selection, scales: Tensor, means: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Code one group of scale ``scale`` with its Gaussian parameters; returns its y_hat
        (and likelihoods)."""
        raise NotImplementedError


def _pyramid(y: Tensor, scales: int) -> list[Tensor]:
    pyramid = [y]
    for _ in range(scales):
        pyramid.append(pyramid[-1][:, :, 1::2, 1::2])
    return pyramid


class _Estimator(_GroupCoder):
    """Training / estimation: noisy (or rounded in eval) values and their likelihoods."""

    def __init__(self, codec: MSPLatentCodec, y: Tensor) -> None:
        self.codec = codec
        self.pyramid = _pyramid(y, codec.profile.scales)

    def _straight_through(self) -> bool:
        return self.codec.training and self.codec.quantizer == "ste"

    def bottleneck(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        coarsest = self.pyramid[-1]
        bottleneck = self.codec.entropy_bottleneck
        y_hat, likelihoods = bottleneck(coarsest)
        if self._straight_through():
            medians = bottleneck._get_medians()
            y_hat = quantize_ste(coarsest - medians) + medians
        return y_hat, likelihoods

    def group(
        self, scale: int, group: Selection, scales: Tensor, means: Tensor
    ) -> tuple[Tensor, Tensor]:
        values = self.pyramid[scale][group]
        gaussian = self.codec.gaussian_conditional
        y_hat, likelihoods = gaussian(values, scales, means)
        if self._straight_through() or (self.codec.training and self.codec.rate == "rounded"):
            rounded = quantize_ste(values - means) + means
            if self._straight_through():
                y_hat = rounded
            if self.codec.rate == "rounded":
                likelihoods = gaussian.likelihood_lower_bound(gaussian._likelihood(rounded, scales, means))
        return y_hat, likelihoods


class _Encoder(_GroupCoder):
    """Encoding one image: quantises around the means and buffers the symbols for ONE rANS stream."""

    def __init__(self, codec: MSPLatentCodec, y: Tensor) -> None:
        self.codec = codec
        self.pyramid = _pyramid(y, codec.profile.scales)
        self.symbols: list[int] = []
        self.indexes: list[int] = []
        self.bottleneck_string = b""

    def bottleneck(self, size: tuple[int, int]) -> tuple[Tensor, None]:
        coarsest = self.pyramid[-1]
        if _is_empty(coarsest):  # compressai's coder crashes on empty input; nothing to write
            return coarsest, None
        bottleneck = self.codec.entropy_bottleneck
        [self.bottleneck_string] = bottleneck.compress(coarsest)
        # The decoder's own reconstruction, so both sides continue from identical values.
        return bottleneck.decompress([self.bottleneck_string], size), None

    def group(self, scale: int, group: Selection, scales: Tensor, means: Tensor) -> tuple[Tensor, None]:
        gaussian = self.codec.gaussian_conditional
        symbols = gaussian.quantize(self.pyramid[scale][group], "symbols", means)
        self.symbols += symbols.reshape(-1).tolist()
        self.indexes += gaussian.build_indexes(scales).reshape(-1).tolist()
        return gaussian.dequantize(symbols, means), None

    def finish(self) -> tuple[bytes, bytes]:
        encoder = BufferedRansEncoder()
        tables = coder_tables(self.codec.gaussian_conditional)
        encoder.encode_with_indexes(self.symbols, self.indexes, *tables)
        return encoder.flush(), self.bottleneck_string


class _Decoder(_GroupCoder):
    """Decoding one image: reads each group from the one rANS stream, in the encoder's order."""

    def __init__(self, codec: MSPLatentCodec, gaussian_string: bytes, bottleneck_string: bytes) -> None:
        self.codec = codec
        self.bottleneck_string = bottleneck_string
        self.tables = coder_tables(codec.gaussian_conditional)
        self.decoder = RansDecoder()
        check_rans_stream(gaussian_string, "Gaussian stream")
        self.decoder.set_stream(gaussian_string)

    def bottleneck(self, size: tuple[int, int]) -> tuple[Tensor, None]:
        if size[0] == 0 or size[1] == 0:
            if self.bottleneck_string:
                raise ValueError("bottleneck stream must be empty for an empty coarsest scale")
            device = self.codec.entropy_bottleneck.quantiles.device
            return torch.zeros(1, self.codec.latent_channels, *size, device=device), None
        check_rans_stream(self.bottleneck_string, "bottleneck stream")
        return self.codec.entropy_bottleneck.decompress([self.bottleneck_string], size), None

    def group(self, scale: int, group: Selection, scales: Tensor, means: Tensor) -> tuple[Tensor, None]:
        gaussian = self.codec.gaussian_conditional
        indexes = gaussian.build_indexes(scales)
        symbols = self.decoder.decode_stream(indexes.reshape(-1).tolist(), *self.tables)
        symbols = torch.tensor(symbols, dtype=torch.int32, device=means.device).reshape(indexes.shape)
        return gaussian.dequantize(symbols, means), None
