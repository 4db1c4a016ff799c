"""Entropy-coding helpers shared by the latent codecs (all on top of CompressAI's models and rANS)."""

from __future__ import annotations

import torch
from compressai.entropy_models import EntropyModel, GaussianConditional
from torch import Tensor


class IndexedGaussianConditional(GaussianConditional):
    """CompressAI's GaussianConditional with a vectorised :meth:`build_indexes`.

    CompressAI builds the scale-table index with a Python loop over the 64 table entries (three
    tensor operations each), which dominates the per-position cost of a serial decoder.
    ``searchsorted`` gives the identical index: the number of table entries (all but the last)
    strictly below the lower-bounded scale.
    """

    def __init__(self, scale_table: list[float] | tuple[float, ...] | None = None, **kwargs) -> None:
        super().__init__(scale_table, **kwargs)

    def build_indexes(self, scales: Tensor) -> Tensor:
        scales = self.lower_bound_scale(scales)
        thresholds = self.scale_table[:-1].to(scales.dtype)
        return torch.searchsorted(thresholds, scales.contiguous(), right=False).int()


def coder_tables(model: EntropyModel) -> tuple[list[list[int]], list[int], list[int]]:
    """(CDF rows, CDF lengths, offsets) as Python lists for compressai.ans, rows trimmed to length.

    The rANS binding converts the CDF list on every call; the padded table of the default 64-scale
    Gaussian has 64 x 3133 entries, the trimmed rows 27k, so trimming makes each call ~8x cheaper.
    """
    lengths = model.cdf_length.tolist()
    rows = [row[:length] for row, length in zip(model.quantized_cdf.tolist(), lengths)]
    return rows, lengths, model.offset.tolist()


def check_rans_stream(stream: bytes, what: str) -> None:
    """Reject what compressai's rANS decoder would read out of bounds on: it starts by reading an
    8-byte state and consumes 32-bit words, without checking the stream length."""
    if len(stream) < 8 or len(stream) % 4:
        raise ValueError(
            f"{what}: {len(stream)} bytes is not a valid rANS stream (>= 8, multiple of 4)"
        )
