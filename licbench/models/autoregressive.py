"""Serial autoregressive context model (Minnen et al., NeurIPS 2018) on the mean-scale hyperprior.

A 5x5 masked convolution over the already decoded latent positions (raster order) plus the
hyperprior's side parameters give each position's Gaussian: one sequential round per latent
position (O(n) decoding).

Built on CompressAI's RasterScanLatentCodec (its forward, networks and quantisation are used as
they are). Its compress/decompress loop is replaced by :func:`raster_scan`, which makes the same
network calls in the same order on the same values, but converts the CDF tables for the rANS
binding once (trimmed) instead of at every position, and builds scale indexes vectorised.
CompressAI's loop spends ~2.3 ms per position on those two (64 x 3133 CDF entries converted per
call; a 64-step Python loop per index): 18.0 s against 4.2 s for a 768x512 decode on one CPU
thread (bench/decode_speed.py --compressai-loop), which would make the serial baseline look
several times slower than its context model is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.latent_codecs import RasterScanLatentCodec
from compressai.layers import MaskedConv2d
from torch import Tensor

from licbench.models.deadline import check_deadline
from licbench.models.entropy import IndexedGaussianConditional, check_rans_stream, coder_tables
from licbench.models.hyperprior import HyperpriorCodec, context_entropy_parameters

# Codes one latent position: (row, col, scales, means), each (1, M, 1, 1) -> integer symbols.
PositionCoder = Callable[[int, int, Tensor, Tensor], Tensor]


class SerialContextCodec(RasterScanLatentCodec):
    """RasterScanLatentCodec with the lean coding loop of :func:`raster_scan` (same bitstream
    semantics: one rANS stream per image, positions in raster order)."""

    def compress(self, y: Tensor, ctx_params: Tensor) -> dict[str, Any]:
        gaussian = self.gaussian_conditional
        strings, y_hats = [], []
        for image_latent, image_params in zip(y.split(1), ctx_params.split(1)):
            symbols: list[int] = []
            indexes: list[int] = []

            def write(row: int, col: int, scales: Tensor, means: Tensor) -> Tensor:
                position_symbols = gaussian.quantize(
                    image_latent[:, :, row : row + 1, col : col + 1], "symbols", means
                )
                symbols.extend(position_symbols.reshape(-1).tolist())
                indexes.extend(gaussian.build_indexes(scales).reshape(-1).tolist())
                return position_symbols

            y_hats.append(raster_scan(self, image_params, write))
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(symbols, indexes, *coder_tables(gaussian))
            strings.append(encoder.flush())
        return {"strings": [strings], "shape": y.shape[2:4], "y_hat": torch.cat(y_hats)}

    def decompress(
        self, strings: list[list[bytes]], shape: tuple[int, int], ctx_params: Tensor, **kwargs: Any
    ) -> dict[str, Any]:
        (image_strings,) = strings
        gaussian = self.gaussian_conditional
        tables = coder_tables(gaussian)
        y_hats = []
        for image_string, image_params in zip(image_strings, ctx_params.split(1)):
            check_rans_stream(image_string, "autoregressive stream")
            decoder = RansDecoder()
            decoder.set_stream(image_string)

            def read(row: int, col: int, scales: Tensor, means: Tensor) -> Tensor:
                indexes = gaussian.build_indexes(scales)
                symbols = decoder.decode_stream(indexes.reshape(-1).tolist(), *tables)
                return torch.tensor(symbols, dtype=torch.int32, device=means.device).reshape(indexes.shape)

            y_hats.append(raster_scan(self, image_params, read))
        return {"y_hat": torch.cat(y_hats)}


def raster_scan(
    codec: RasterScanLatentCodec, side_params: Tensor, code_position: PositionCoder
) -> Tensor:
    """Visit the positions of one image in raster order; returns the decoded latent (1, M, H, W).

    At each position the masked 5x5 context of the values decoded so far and the side parameters
    give (scales, means); ``code_position`` writes or reads the symbols, and mu + symbol is stored.
    """
    context = codec.context_prediction
    # The masked 5x5 convolution at one position is a matrix-vector product; as F.linear it skips
    # the convolution set-up that dominates a 1-position conv2d on CPU (same values up to float
    # summation order, and encoder and decoder both run this function).
    masked_weight = (context.weight * context.mask).flatten(1)
    kernel, pad = codec.kernel_size, codec.padding
    _, _, height, width = side_params.shape
    y_hat = side_params.new_zeros(1, context.in_channels, height + 2 * pad, width + 2 * pad)
    for row in range(height):
        check_deadline()
        for col in range(width):
            window = y_hat[:, :, row : row + kernel, col : col + kernel].reshape(1, -1)
            context_features = F.linear(window, masked_weight, context.bias)[:, :, None, None]
            side = side_params[:, :, row : row + 1, col : col + 1]
            scales, means = codec.entropy_parameters(codec.merge(side, context_features)).chunk(2, 1)
            symbols = code_position(row, col, scales, means)
            y_hat[:, :, row + pad : row + pad + 1, col + pad : col + pad + 1] = (
                codec.gaussian_conditional.dequantize(symbols, means)
            )
    return y_hat[:, :, pad : pad + height, pad : pad + width]


class AutoregressiveCodec(HyperpriorCodec):
    """Hyperprior + serial 5x5 masked context (Minnen 2018) for ``latent_channels`` channels."""

    # CompressAI's parallel raster-scan forward reconstructs round(y), not mu + round(y - mu): its
    # estimate is not what the serial coder writes (the means depend on the decoded neighbours).
    estimate_matches_coder = False

    def __init__(self, latent_channels: int, hyper_channels: int) -> None:
        y_codec = SerialContextCodec(
            gaussian_conditional=IndexedGaussianConditional(),
            entropy_parameters=context_entropy_parameters(latent_channels),
            context_prediction=MaskedConv2d(
                latent_channels, 2 * latent_channels, kernel_size=5, padding=2
            ),
        )
        super().__init__(latent_channels, hyper_channels, y_codec=y_codec)

    def sequential_passes(self, latent_height: int, latent_width: int) -> int:
        """One round per latent position."""
        return latent_height * latent_width
