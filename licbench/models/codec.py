"""A learned image codec: analysis transform, gain units, latent codec, synthesis transform.

Variable rate uses gain units (Cui et al., "Asymmetric Gained Deep Image Compression With
Continuous Rate Adaptation", CVPR 2021): for rate index r, a learned gain vector g_r (one value per
latent channel) scales the latent before quantisation, ``y = g_a(x) * g_r``, and a learned inverse
gain g'_r rescales the decoded latent, ``g_s(y_hat * g'_r)``. Rate index 0 is the lowest rate.

Bitstream container (one image): ``pack_bitstream`` / ``unpack_bitstream`` write and check a small
header (format byte, rate index, latent size, string lengths) and a CRC-32 of everything, so that a
truncated or corrupted bitstream raises :class:`BitstreamError` before it reaches the rANS decoder
(whose C++ implementation does not bounds-check its input).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Protocol

import torch
import torch.nn as nn
from compressai.latent_codecs import LatentCodec
from compressai.models import CompressionModel
from torch import Tensor

from licbench.models.transforms import AnalysisTransform, SynthesisTransform

RateIndex = int | Tensor

FORMAT_VERSION = 1
_HEADER = struct.Struct(">BBHHB")  # format version, rate index, latent height, latent width, n strings
_LENGTH = struct.Struct(">I")
_CRC = struct.Struct(">I")


class BitstreamError(ValueError):
    """A bitstream cannot be decoded: truncated, corrupted, or not made by this model."""


class SizedLatentCodec(Protocol):
    """What :class:`LearnedCodec` needs from a latent codec beyond compressai's ``LatentCodec``."""

    latent_stride: int

    def sequential_passes(self, latent_height: int, latent_width: int) -> int: ...

    def shape_for_latent(self, latent_height: int, latent_width: int) -> Any: ...


class LearnedCodec(CompressionModel):
    """g_a + gain units + latent codec + g_s, with CompressAI's update()/aux_loss()/load_state_dict().

    ``stride``: the caller pads images to a multiple of it (transform stride times the latent
    codec's own factor: 1 for MSP, which handles odd latent sizes itself; 4 for the hyperprior
    family, whose h_a downsamples the latent twice). ``config``: the exact keyword arguments of
    :func:`licbench.models.build_model` that rebuild this model.
    """

    def __init__(
        self,
        analysis: AnalysisTransform,
        synthesis: SynthesisTransform,
        latent_codec: LatentCodec,
        latent_channels: int,
        n_rates: int,
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        if not 1 <= n_rates <= 255:
            raise ValueError(f"n_rates must be in [1, 255], got {n_rates}")
        self.g_a = analysis
        self.g_s = synthesis
        self.latent_codec = latent_codec
        self.n_rates = n_rates
        # Half an octave of quantisation step between neighbouring rates at initialisation, the
        # highest rate at unit gain; training moves them.
        initial_gains = 2.0 ** ((torch.arange(n_rates, dtype=torch.float32) - (n_rates - 1)) / 2)
        self.gains = nn.Parameter(initial_gains[:, None].repeat(1, latent_channels))
        self.inverse_gains = nn.Parameter((1.0 / initial_gains)[:, None].repeat(1, latent_channels))
        self.stride: int = analysis.stride * latent_codec.latent_stride
        self.config = dict(config)
        # (metric, lambda per rate index) the model was trained for; set when loaded from a file.
        self.rd_objective: tuple[str, list[float]] | None = None

    # -- gain units -------------------------------------------------------------------------
    def _gain(self, table: Tensor, rate_index: RateIndex, batch: int) -> Tensor:
        """The (B or 1, M, 1, 1) gain of ``table`` for an int rate index or one per batch item."""
        if isinstance(rate_index, Tensor):
            if rate_index.dtype not in (torch.int32, torch.int64) or rate_index.shape != (batch,):
                raise ValueError(
                    f"rate_index tensor must be integer with shape ({batch},), "
                    f"got {rate_index.dtype} {tuple(rate_index.shape)}"
                )
            if rate_index.numel() and not (
                0 <= int(rate_index.min()) and int(rate_index.max()) < self.n_rates
            ):
                raise ValueError(f"rate_index values must be in [0, {self.n_rates})")
            return table[rate_index.to(table.device)][:, :, None, None]
        if not isinstance(rate_index, int) or not 0 <= rate_index < self.n_rates:
            raise ValueError(f"rate_index must be an int in [0, {self.n_rates}), got {rate_index!r}")
        return table[rate_index][None, :, None, None]

    def _check_image(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch (B, 3, H, W), got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the model stride {self.stride}: "
                "pad it first"
            )

    def analyze(self, x: Tensor, rate_index: RateIndex) -> Tensor:
        """The latent to quantise, ``g_a(x) * g_r`` (differentiable)."""
        return self.g_a(x) * self._gain(self.gains, rate_index, x.shape[0])

    def reconstruct(self, y_hat: Tensor, rate_index: RateIndex) -> Tensor:
        """``g_s(y_hat * g'_r)``, not clamped (differentiable)."""
        return self.g_s(y_hat * self._gain(self.inverse_gains, rate_index, y_hat.shape[0]))

    # -- coding ----------------------------------------------------------------------------
    def forward(self, x: Tensor, rate_index: RateIndex) -> dict[str, Any]:
        """Training / estimation pass: reconstruction, likelihoods of every coded element, y_hat."""
        self._check_image(x)
        y_out = self.latent_codec(self.analyze(x, rate_index))
        y_hat = y_out["y_hat"]
        return {"x_hat": self.reconstruct(y_hat, rate_index), "likelihoods": y_out["likelihoods"], "y_hat": y_hat}

    @torch.no_grad()
    def compress(self, x: Tensor, rate_index: int, latent: Tensor | None = None) -> dict[str, Any]:
        """Entropy-code ``x``: {"strings": [[bytes per image] per stream], "shape", "y_hat"}.

        ``latent``: code this latent instead of ``g_a(x) * g_r`` (latent overfitting, :mod:`licbench.models.lof`).
        """
        self._check_image(x)
        if latent is None:
            y = self.analyze(x, rate_index)
        else:
            step = self.g_a.stride
            expected = (x.shape[0], self.gains.shape[1], x.shape[-2] // step, x.shape[-1] // step)
            if tuple(latent.shape) != expected:
                raise ValueError(f"latent shape {tuple(latent.shape)} does not match the image's {expected}")
            y = latent
        # Non-finite latents or probability parameters would make the C++ coder write garbage or
        # crash; finite weights and latent keep every parameter finite.
        if not torch.isfinite(y).all() or not all(torch.isfinite(p).all() for p in self.parameters()):
            raise ValueError("non-finite latent or weights: this model cannot encode")
        return self.latent_codec.compress(y)

    @torch.no_grad()
    def decompress(self, strings: list[list[bytes]], shape: Any, rate_index: int) -> dict[str, Tensor]:
        """Decode what :meth:`compress` wrote: {"x_hat" (clamped to [0, 1]), "y_hat"}."""
        if not isinstance(strings, (list, tuple)) or not all(
            isinstance(stream, (list, tuple)) and all(isinstance(s, bytes) for s in stream)
            for stream in strings
        ):
            raise BitstreamError("strings must be a list of lists of bytes")
        try:
            y_hat = self.latent_codec.decompress(strings, shape)["y_hat"]
        except BitstreamError:
            raise
        except (ValueError, RuntimeError, AssertionError, IndexError) as error:
            raise BitstreamError(f"latent decoding failed: {error}") from error
        if not torch.isfinite(y_hat).all():
            raise BitstreamError("decoded latent contains non-finite values")
        return {"x_hat": self.synthesize(y_hat, rate_index), "y_hat": y_hat}

    @torch.no_grad()
    def synthesize(self, y_hat: Tensor, rate_index: int) -> Tensor:
        """The decoded image (clamped to [0, 1]) of a decoded latent: what the encoder keeps as its
        own reconstruction and the decoder outputs."""
        return self.reconstruct(y_hat, rate_index).clamp_(0, 1)

    # -- one-image bitstream container ---------------------------------------------------
    def pack_bitstream(self, compressed: dict[str, Any], rate_index: int) -> bytes:
        """Serialise the output of :meth:`compress` for ONE image into a self-checking bitstream."""
        streams = compressed["strings"]
        if any(len(stream) != 1 for stream in streams):
            raise ValueError("pack_bitstream takes the output of compress() for a single image")
        payloads = [stream[0] for stream in streams]
        latent_height, latent_width = compressed["y_hat"].shape[-2:]
        header = _HEADER.pack(FORMAT_VERSION, rate_index, latent_height, latent_width, len(payloads))
        # The last payload's length is implied by the total length.
        lengths = b"".join(_LENGTH.pack(len(p)) for p in payloads[:-1])
        body = header + lengths + b"".join(payloads)
        return body + _CRC.pack(zlib.crc32(body))

    def unpack_bitstream(self, data: bytes) -> tuple[list[list[bytes]], Any, int]:
        """Check and split a bitstream from :meth:`pack_bitstream`: (strings, shape, rate_index)."""
        if len(data) < _HEADER.size + _CRC.size:
            raise BitstreamError(f"bitstream too short ({len(data)} bytes)")
        body, (crc,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
        if zlib.crc32(body) != crc:
            raise BitstreamError("bitstream checksum mismatch: truncated or corrupted")
        version, rate_index, latent_height, latent_width, n_streams = _HEADER.unpack_from(body)
        if version != FORMAT_VERSION:
            raise BitstreamError(f"unknown bitstream format version {version}")
        if rate_index >= self.n_rates:
            raise BitstreamError(f"rate index {rate_index} out of range for this model")
        offset = _HEADER.size + _LENGTH.size * (n_streams - 1)
        if n_streams < 1 or offset > len(body):
            raise BitstreamError(f"bad stream count {n_streams}")
        lengths = [
            _LENGTH.unpack_from(body, _HEADER.size + _LENGTH.size * i)[0] for i in range(n_streams - 1)
        ]
        payloads = []
        for length in lengths:
            payloads.append(body[offset : offset + length])
            offset += length
        if offset > len(body):
            raise BitstreamError("stream lengths exceed the bitstream size")
        payloads.append(body[offset:])
        shape = self.latent_codec.shape_for_latent(latent_height, latent_width)
        return [[p] for p in payloads], shape, rate_index

    def decode_bitstream(self, data: bytes) -> dict[str, Tensor]:
        """:meth:`unpack_bitstream` then :meth:`decompress`."""
        strings, shape, rate_index = self.unpack_bitstream(data)
        return self.decompress(strings, shape, rate_index)

    # -- complexity ------------------------------------------------------------------------
    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent height and width for an image of that (padded) size."""
        return -(-height // self.g_a.stride), -(-width // self.g_a.stride)

    def sequential_passes(self, height: int, width: int) -> int:
        """Sequential entropy-decoding rounds for y at that image size (see the latent codec)."""
        return self.latent_codec.sequential_passes(*self.latent_size(height, width))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def decoder_kmac_per_pixel(self, height: int, width: int) -> float:
        """Approximate decoder multiply-accumulates per pixel (thousands), convolutions only.

        Counted with forward hooks on every convolution of g_s and of the latent codec except h_a,
        during an eval-mode forward pass on a random image: that pass runs the probability
        networks as the decoder does (MSP: all progressive passes; checkerboard: both passes;
        autoregressive: the masked context over all positions at once, the same MACs as the
        serial decode).
        """
        hooks = []
        total = [0]

        def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            # weight[0]: (in / groups, kh, kw) for a convolution, applied at every output
            # element; (out / groups, kh, kw) for a transposed one, at every input element.
            applied_at = inputs[0] if isinstance(module, nn.ConvTranspose2d) else output
            total[0] += applied_at.numel() * module.weight[0].numel()

        for name, module in self.named_modules():
            is_encoder_side = name.startswith("g_a") or ".h_a" in name
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and not is_encoder_side:
                hooks.append(module.register_forward_hook(count))
        was_training = self.training
        self.eval()
        try:
            self(torch.rand(1, 3, height, width), self.n_rates - 1)
        finally:
            for hook in hooks:
                hook.remove()
            self.train(was_training)
        return total[0] / (height * width) / 1000.0
