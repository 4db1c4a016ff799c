"""The learned codecs of licbench: MSP (profiles) and the three baselines on the same transforms.

Bitstream: a versioned header naming the model, profile, checkpoint and image size, with its own
CRC-32, then the model's own self-checking payload (:meth:`LearnedCodec.pack_bitstream`). Decoding
needs nothing but these bytes and the checkpoint. The encoder keeps its own reconstruction, which
the harness compares with the decoder's output.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from licbench.codecs._shared import check_rgb
from licbench.codecs.base import Availability, Codec, CodecError, CodecTimeout, CodecUnavailable, Encoded, register

MAGIC = b"LICB"
HEADER_VERSION = 2
# magic, header version, model tag length, image height, image width, checkpoint sha256 prefix;
# then the tag and a CRC-32 of all that: the payload's own CRC does not cover the image size,
# and a flipped bit there would otherwise decode to a wrongly cropped image without an error.
_HEADER = struct.Struct(">4sBBII8s")
_CRC = struct.Struct(">I")


def pack_header(tag: str, height: int, width: int, checkpoint_sha256: str) -> bytes:
    encoded_tag = tag.encode()
    header = _HEADER.pack(MAGIC, HEADER_VERSION, len(encoded_tag), height, width, bytes.fromhex(checkpoint_sha256[:16])) + encoded_tag
    return header + _CRC.pack(zlib.crc32(header))


def unpack_header(data: bytes) -> tuple[str, int, int, str, bytes]:
    """(model tag, height, width, checkpoint sha256 prefix, payload) of a learned-codec bitstream."""
    if len(data) < _HEADER.size:
        raise CodecError(f"bitstream too short for a licbench header ({len(data)} bytes)")
    magic, version, tag_length, height, width, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError("not a licbench learned-codec bitstream (bad magic)")
    if version != HEADER_VERSION:
        raise CodecError(f"unsupported learned-codec bitstream version {version}")
    end = _HEADER.size + tag_length
    if len(data) < end + _CRC.size or _CRC.unpack_from(data, end)[0] != zlib.crc32(data[:end]):
        raise CodecError("learned-codec bitstream header checksum mismatch: truncated or corrupted")
    if not 0 < height <= 1 << 16 or not 0 < width <= 1 << 16:
        raise CodecError(f"corrupt learned-codec bitstream header (image size {width}x{height})")
    try:
        tag = data[_HEADER.size : end].decode()
    except UnicodeDecodeError:
        raise CodecError("corrupt learned-codec bitstream header (model tag)") from None
    return tag, height, width, digest.hex(), data[end + _CRC.size :]


class LearnedImageCodec(Codec):
    """A :mod:`licbench.models` codec with a trained checkpoint; rate points are gain-unit indices."""

    model: ClassVar[str]
    profile: ClassVar[str | None] = None
    rate_parameter = "rate_index"
    default_rates = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    # lof_*: latent overfitting at encode time (licbench.models.lof); 0 iterations = off.
    default_settings: ClassVar[dict[str, Any]] = {
        "checkpoint": "",
        "device": "cpu",
        "threads": 0,
        "lof_iterations": 0,
        "lof_lr": 0.005,
        "lof_check_every": 5,
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        from licbench.models.lof import LatentOverfitting

        try:
            self.lof = LatentOverfitting(
                self.settings["lof_iterations"], self.settings["lof_lr"], self.settings["lof_check_every"]
            )
        except ValueError:
            raise ValueError(
                f"codec {self.name!r}: lof_iterations must be >= 0, lof_lr > 0 and lof_check_every >= 1"
            ) from None

    @property
    def tag(self) -> str:
        return f"{self.model}/{self.profile}" if self.profile else self.model

    def _checkpoint_name(self) -> str:
        # licbench.models (imported with its zoo module) pulls in torch and compressai: imported
        # here, not at module level, because every licbench process imports all adapters.
        from licbench.models.zoo import default_checkpoint

        if self.settings["checkpoint"]:
            return self.settings["checkpoint"]
        entry = default_checkpoint(self.model, self.profile)
        if entry is None:
            raise CodecUnavailable(
                f"no trained {self.tag} checkpoint is shipped yet; train one with "
                f"`licbench train --model {self.model}"
                + (f" --profile {self.profile}" if self.profile else "")
                + "` and pass checkpoint=PATH"
            )
        return entry.name

    def availability(self) -> Availability:
        from licbench.models.zoo import resolve_checkpoint

        try:
            resolve_checkpoint(self._checkpoint_name())
        except (CodecUnavailable, FileNotFoundError, ValueError) as exc:
            return Availability(False, str(exc))
        if self.settings["device"].startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return Availability(False, "device=cuda but no CUDA device is available")
        return Availability(True)

    @cached_property
    def _loaded(self) -> tuple[Any, str, Path]:
        """(model ready to code, checkpoint sha256, checkpoint path), loaded once."""
        import torch

        from licbench.models.zoo import resolve_checkpoint
        from licbench.training.checkpoint import load_model

        if self.settings["threads"]:
            torch.set_num_threads(self.settings["threads"])
        try:
            path, digest = resolve_checkpoint(self._checkpoint_name())
            model = load_model(path, device=self.settings["device"])
        except (FileNotFoundError, ValueError) as exc:  # the messages name the file and the problem
            raise CodecError(f"{self.name}: {exc}") from None
        config = model.config
        if config["model"] != self.model or config.get("profile") != self.profile:
            raise CodecError(f"checkpoint {path.name} holds a {config['model']}/{config.get('profile')} model, not {self.tag}")
        return model, digest, path

    def load(self) -> None:
        self._loaded

    def version(self) -> str:
        _, digest, path = self._loaded
        return f"{self.tag} {path.name} sha256:{digest[:12]}"

    def describe(self) -> dict[str, Any]:
        model, digest, path = self._loaded
        return {
            **self.settings,
            "model": model.config,
            "checkpoint_file": path.name,
            "checkpoint_sha256": digest,
            "parameters": model.parameter_count(),
            "colour": "RGB in [0, 1], no colour conversion",
            "padding": f"replicate to a multiple of {model.stride}, cropped after decoding",
        }

    def _rate_index(self, rate: float) -> int:
        model = self._loaded[0]
        index = int(rate)
        if index != rate or not 0 <= index < model.n_rates:
            raise CodecError(f"{self.tag}: rate_index must be an integer in [0, {model.n_rates}), got {rate:g}")
        return index

    @lru_cache(maxsize=8)
    def complexity(self, height: int, width: int) -> dict[str, Any]:
        """Decoder cost at that image size; the kMAC count costs a forward pass, hence the cache."""
        model = self._loaded[0]
        height, width = height + -height % model.stride, width + -width % model.stride
        return {
            "sequential_passes": model.sequential_passes(height, width),
            "parameters": model.parameter_count(),
            "kmac_per_pixel": round(model.decoder_kmac_per_pixel(height, width), 2),
        }

    def encode(self, image: np.ndarray, rate: float, workdir: Path, timeout: float) -> Encoded:
        with _time_limit(self.tag, timeout):
            return self._encode(image, rate)

    def _encode(self, image: np.ndarray, rate: float) -> Encoded:
        import torch

        from licbench.training.data import rgb_tensor
        from licbench.training.evaluate import pad_to_multiple

        check_rgb(image, self.name)
        model, digest, _ = self._loaded
        rate_index = self._rate_index(rate)
        height, width = image.shape[:2]
        x = rgb_tensor(image)[None]
        x = pad_to_multiple(x, model.stride).to(self.settings["device"])
        info: dict[str, Any] = {"rate_index": rate_index}
        latent = None
        if self.lof.iterations:
            latent, record = self._overfit(model, x, rate_index, height, width)
            info.update(record)
        with torch.no_grad():
            compressed = model.compress(x, rate_index, latent=latent)
            reconstruction = model.synthesize(compressed["y_hat"], rate_index)
        bitstream = pack_header(self.tag, height, width, digest) + model.pack_bitstream(compressed, rate_index)
        return Encoded(bitstream, reconstruction=_to_uint8(reconstruction, height, width), info=info)

    def _overfit(self, model: Any, x: Any, rate_index: int, height: int, width: int) -> tuple[Any, dict[str, Any]]:
        """Latent overfitting of ``x`` for the model's own training objective at this rate point."""
        from licbench.models.lof import overfit_latent

        if model.rd_objective is None or model.rd_objective[0] != "mse":
            raise CodecError(f"{self.tag}: latent overfitting needs a checkpoint trained for MSE with its lambdas recorded")
        try:
            return overfit_latent(model, x, rate_index, model.rd_objective[1][rate_index], self.lof, height, width)
        except ValueError as exc:
            raise CodecError(f"{self.tag}: {exc}") from None

    def decode(self, bitstream: bytes, workdir: Path, timeout: float) -> np.ndarray:
        with _time_limit(self.tag, timeout):
            return self._decode(bitstream)

    def _decode(self, bitstream: bytes) -> np.ndarray:
        from licbench.models import BitstreamError

        model, digest, path = self._loaded
        tag, height, width, digest_prefix, payload = unpack_header(bitstream)
        if tag != self.tag:
            raise CodecError(f"bitstream was made by {tag}, not {self.tag}")
        if not digest.startswith(digest_prefix):
            raise CodecError(f"bitstream was made with checkpoint sha256 {digest_prefix}..., not {path.name} ({digest[:16]}...)")
        try:
            x_hat = model.decode_bitstream(payload)["x_hat"]
        except BitstreamError as exc:
            raise CodecError(f"{self.tag}: {exc}") from None
        if x_hat.shape[-2] < height or x_hat.shape[-1] < width:
            raise CodecError(f"{self.tag}: decoded {tuple(x_hat.shape[-2:])} is smaller than the header's {height}x{width}")
        return _to_uint8(x_hat, height, width)


@contextmanager
def _time_limit(tag: str, seconds: float) -> Iterator[None]:
    """``licbench run --timeout`` for in-process models: checked between network passes."""
    from licbench.models.deadline import DeadlineExceeded, deadline

    try:
        with deadline(seconds):
            yield
    except DeadlineExceeded as exc:
        raise CodecTimeout(f"{tag}: {exc}") from None


def _to_uint8(x_hat: Any, height: int, width: int) -> np.ndarray:
    """(1, 3, H', W') in [0, 1] -> uint8 H x W x 3, cropped to the image size."""
    pixels = x_hat[0, :, :height, :width].clamp(0, 1).mul(255).round().byte()
    return pixels.permute(1, 2, 0).cpu().numpy()


@register
class MSPBase(LearnedImageCodec):
    name = "msp"
    model = "msp"
    profile = "base"
    description = "MSP multi-scale progressive model, profile base (27 sequential passes), our transforms"


@register
class MSPBaseLOF(MSPBase):
    name = "msp-lof"
    description = "MSP profile base + latent overfitting at encode time (40 Adam steps on the latent); decoder as msp"
    default_settings: ClassVar[dict[str, Any]] = {**LearnedImageCodec.default_settings, "lof_iterations": 40}


@register
class MSPExtra(LearnedImageCodec):
    name = "msp-extra"
    model = "msp"
    profile = "extra"
    description = "MSP multi-scale progressive model, profile extra (120 sequential passes), our transforms"


@register
class Checkerboard(LearnedImageCodec):
    name = "checkerboard"
    model = "checkerboard"
    description = "checkerboard context + hyperprior (He et al. 2021), on the MSP transforms"


@register
class Autoregressive(LearnedImageCodec):
    name = "autoregressive"
    model = "autoregressive"
    description = "serial 5x5 masked context + hyperprior (Minnen et al. 2018), on the MSP transforms"


@register
class Hyperprior(LearnedImageCodec):
    name = "hyperprior"
    model = "hyperprior"
    description = "mean-scale hyperprior, no context (Minnen et al. 2018), on the MSP transforms"
