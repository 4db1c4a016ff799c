"""CompressAI's image models (``compressai.zoo``) as codecs named ``compressai:<architecture>``.

The rate parameter is CompressAI's quality index (one trained model per quality). Settings:

- ``metric``: ``mse`` or ``ms-ssim``, the loss the pretrained weights were trained for;
- ``pretrained`` (true): CompressAI's published weights; false builds the architecture with random
  weights seeded by ``seed``, so that separate encoder and decoder instances agree (for tests);
- ``device`` (``cpu``);
- ``mirror``: a base URL the weight files are fetched from instead of CompressAI's server (default
  ``$LICBENCH_COMPRESSAI_MIRROR``, else the official URL). A codec spec on the command line cannot
  hold a URL (its colons separate settings): there, use the environment variable.

Weights are fetched by licbench, not by ``torch.hub.load_state_dict_from_url`` (which unpickles
without ``weights_only``): the official file name goes to ``torch.hub.get_dir()/checkpoints`` (where
torch.hub and CompressAI would put it, so their downloads are reused), its sha256 must start with
the 8 hex digits the name carries (CompressAI's ``name-<sha256[:8]>.pth.tar`` convention), and it is
loaded with ``torch.load(weights_only=True)``.

Bitstream: a versioned header (architecture, metric, quality, weights, image size, latent shape,
string lengths), CompressAI's entropy-coded strings, and a CRC-32 of all of it, checked before any
byte reaches CompressAI's rANS decoder, whose C++ code does not bounds-check its input. The image is
replicate-padded to a multiple of 64 and the decoded image cropped.

The encoder does not return a reconstruction: CompressAI's ``compress`` does not produce the
decoded latent, and decoding at the encoder to get it would add a decode to the encode time.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from licbench.codecs._shared import check_rgb, format_rate
from licbench.codecs.base import Availability, Codec, CodecError, CodecUnavailable, Encoded, register
from licbench.datasets.catalogue import Checksum
from licbench.datasets.errors import ChecksumError, DownloadError
from licbench.datasets.download import download
from licbench.digest import file_digest

# The image architectures of compressai.zoo.image_models (without the variable-rate "-vbr" models)
# and their quality indices. Listed here rather than read from compressai at import time because
# every licbench process imports all adapters, and importing compressai costs seconds (it pulls in
# torch and torch_geometric); tests/test_compressai_zoo.py checks this table against compressai.
ARCHITECTURE_QUALITIES: dict[str, int] = {
    "bmshj2018-factorized": 8,
    "bmshj2018-factorized-relu": 8,
    "bmshj2018-hyperprior": 8,
    "mbt2018-mean": 8,
    "mbt2018": 8,
    "cheng2020-anchor": 6,
    "cheng2020-attn": 6,
}
METRICS = ("mse", "ms-ssim")
PAD_MULTIPLE = 64  # g_a downsamples 16x and h_a 4x more
MIRROR_ENV = "LICBENCH_COMPRESSAI_MIRROR"
# CompressAI's weight files are named <name>-<first 8 hex digits of their sha256>.pth.tar
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth(?:\.tar)?$")

MAGIC = b"LCAI"
FORMAT_VERSION = 1
# magic, format version, metric index, quality, flags (bit 0: pretrained), weights id (pretrained:
# the file's sha256 prefix; random: the seed), image height, image width, latent height, latent
# width, number of strings, architecture name length
_HEADER = struct.Struct(">4sBBBB4sHHHHBB")
_LENGTH = struct.Struct(">I")
_CRC = struct.Struct(">I")
_PRETRAINED_FLAG = 1
_MAX_SIDE = 0xFFFF


@dataclass(frozen=True)
class Sha256Prefix(Checksum):
    """A checksum known only by the first hex digits of the sha256, as in CompressAI file names."""

    def matches(self, actual_hexdigest: str) -> bool:
        return actual_hexdigest.lower().startswith(self.hexdigest.lower())


@dataclass(frozen=True)
class StreamHeader:
    """What the header of a ``compressai:`` bitstream says."""

    architecture: str
    metric: str
    quality: int
    pretrained: bool
    weights_id: bytes
    height: int
    width: int
    latent_shape: tuple[int, int]
    strings: list[bytes]


def pack_bitstream(header: StreamHeader) -> bytes:
    name = header.architecture.encode()
    fixed = _HEADER.pack(
        MAGIC, FORMAT_VERSION, METRICS.index(header.metric), header.quality,
        _PRETRAINED_FLAG if header.pretrained else 0, header.weights_id, header.height, header.width,
        *header.latent_shape, len(header.strings), len(name),
    )  # fmt: skip
    # The last string's length is implied by the total length.
    lengths = b"".join(_LENGTH.pack(len(s)) for s in header.strings[:-1])
    body = fixed + name + lengths + b"".join(header.strings)
    return body + _CRC.pack(zlib.crc32(body))


def unpack_bitstream(data: bytes) -> StreamHeader:
    """Check the CRC and split a bitstream from :func:`pack_bitstream`; CodecError when damaged."""
    if len(data) < _HEADER.size + _CRC.size:
        raise CodecError(f"compressai bitstream too short ({len(data)} bytes)")
    body, (crc,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
    if zlib.crc32(body) != crc:
        raise CodecError("compressai bitstream checksum mismatch: truncated or corrupted")
    magic, version, metric, quality, flags, weights_id, height, width, latent_h, latent_w, n_strings, name_length = (
        _HEADER.unpack_from(body)
    )
    if magic != MAGIC:
        raise CodecError("not a licbench compressai bitstream (bad magic)")
    if version != FORMAT_VERSION:
        raise CodecError(f"unsupported compressai bitstream version {version}")
    if metric >= len(METRICS) or n_strings < 1 or 0 in (height, width, latent_h, latent_w):
        raise CodecError("corrupt compressai bitstream header")
    offset = _HEADER.size + name_length
    if offset + _LENGTH.size * (n_strings - 1) > len(body):
        raise CodecError("corrupt compressai bitstream header (longer than the bitstream)")
    lengths = [_LENGTH.unpack_from(body, offset + _LENGTH.size * i)[0] for i in range(n_strings - 1)]
    offset += _LENGTH.size * (n_strings - 1)
    strings = []
    for length in lengths + [len(body) - offset - sum(lengths)]:
        if length < 0 or offset + length > len(body):
            raise CodecError("compressai bitstream string lengths exceed its size")
        strings.append(body[offset : offset + length])
        offset += length
    try:
        architecture = body[_HEADER.size : _HEADER.size + name_length].decode()
    except UnicodeDecodeError:
        raise CodecError("corrupt compressai bitstream header (architecture name)") from None
    return StreamHeader(
        architecture, METRICS[metric], quality, bool(flags & _PRETRAINED_FLAG), weights_id,
        height, width, (latent_h, latent_w), strings,
    )  # fmt: skip


def hash_prefix(file_name: str) -> str:
    """The sha256 prefix a CompressAI weight file name carries (``...-446d5c7f.pth.tar``)."""
    match = _HASH_IN_NAME.search(file_name)
    if match is None:
        raise CodecError(f"weight file name {file_name!r} carries no sha256 prefix (expected NAME-<hex>.pth.tar)")
    return match.group(1)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _refusal(exc: Exception) -> str:
    """One line for why ``torch.load(weights_only=True)`` refused a file."""
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if unsupported:
        return f"it holds a pickled {unsupported.group(1)}, not plain tensors (refused by weights-only loading)"
    return _first_line(exc)


class CompressAIZooCodec(Codec):
    """One CompressAI image architecture; subclasses below fix ``architecture``."""

    architecture: ClassVar[str]
    default_settings: ClassVar[dict[str, Any]] = {
        "metric": "mse",
        "pretrained": True,
        "device": "cpu",
        "seed": 0,
        "mirror": "",
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.settings["metric"] not in METRICS:
            raise ValueError(f"codec {self.name!r}: metric must be one of {METRICS}, got {self.settings['metric']!r}")
        if not 0 <= self.settings["seed"] <= 0xFFFFFFFF:
            raise ValueError(f"codec {self.name!r}: seed must be in [0, 2^32), got {self.settings['seed']}")
        self._models: dict[int, Any] = {}
        self._failures: dict[int, CodecError] = {}

    @property
    def qualities(self) -> range:
        return range(1, ARCHITECTURE_QUALITIES[self.architecture] + 1)

    def architecture_class(self) -> type:
        """CompressAI's model class (its table spells bmshj2018_factorized_relu with underscores)."""
        from compressai.zoo.image import model_architectures

        return {name.replace("_", "-"): cls for name, cls in model_architectures.items()}[self.architecture]

    # -- weights ---------------------------------------------------------------------------
    def official_url(self, quality: int) -> str | None:
        """CompressAI's URL of the pretrained weights, or None when it publishes none."""
        from compressai.zoo.image import model_urls

        return model_urls.get(self.architecture, {}).get(self.settings["metric"], {}).get(quality)

    def weights_source(self, quality: int) -> tuple[str, Path]:
        """(URL to fetch, cache file) of the pretrained weights for ``quality``."""
        import torch.hub

        url = self.official_url(quality)
        if url is None:
            raise CodecUnavailable(
                f"{self.name}: CompressAI publishes no pretrained {self.settings['metric']} weights for quality "
                f"{quality}; use pretrained=false for random weights (testing only)"
            )
        file_name = url.rsplit("/", 1)[-1]
        mirror = self.settings["mirror"] or os.environ.get(MIRROR_ENV, "")
        if mirror:
            url = f"{mirror.rstrip('/')}/{file_name}"
        return url, Path(torch.hub.get_dir()) / "checkpoints" / file_name

    def fetch_weights(self, quality: int) -> Path:
        """The verified local weight file for ``quality``, downloaded if it is not cached yet."""
        url, path = self.weights_source(quality)
        prefix = hash_prefix(path.name)
        if path.is_file():
            found = file_digest(path)
            if not found.startswith(prefix):
                raise CodecError(
                    f"{self.name}: cached {path} has sha256 {found[:12]}..., not the {prefix} its name "
                    "promises; delete it to download it again"
                )
            return path
        try:
            download(url, path, expected=Sha256Prefix("sha256", prefix))
        except ChecksumError as exc:
            raise CodecError(f"{self.name}: {exc}") from None
        except DownloadError as exc:
            raise CodecUnavailable(
                f"{self.name}: {exc}; place {path.name} in {path.parent} (or set ${MIRROR_ENV} to a base URL "
                "serving it), or use pretrained=false for random weights (testing only)"
            ) from None
        return path

    def _pretrained_model(self, quality: int) -> Any:
        import torch
        from compressai.zoo.pretrained import load_pretrained

        path = self.fetch_weights(quality)
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises assorted types for foreign, damaged or unsafe files
            raise CodecError(f"{self.name}: {path} is not loadable: {_refusal(exc)}") from None
        if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
            raise CodecError(f"{self.name}: {path} does not hold a state_dict of tensors")
        try:
            return self.architecture_class().from_state_dict(load_pretrained(state_dict))
        except (KeyError, RuntimeError) as exc:
            raise CodecError(f"{self.name}: {path} does not fit the architecture: {_first_line(exc)}") from None

    def _random_model(self, quality: int) -> Any:
        import torch
        from compressai.zoo.image import cfgs

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings["seed"])
            return self.architecture_class()(*cfgs[self.architecture][quality])

    def model(self, quality: int) -> Any:
        """The CompressAI model for ``quality``, ready to code (built or loaded once per instance)."""
        if quality in self._failures:  # a failed download is not retried for every image
            raise self._failures[quality]
        if quality not in self._models:
            try:
                model = self._pretrained_model(quality) if self.settings["pretrained"] else self._random_model(quality)
            except CodecError as exc:
                self._failures[quality] = exc
                raise
            model.update(force=True)
            self._models[quality] = model.to(self.settings["device"]).eval()
        return self._models[quality]

    def weights_id(self, quality: int) -> bytes:
        """4 bytes naming the weights in the bitstream: the file's sha256 prefix, or the seed."""
        if self.settings["pretrained"]:
            return bytes.fromhex(hash_prefix(self.weights_source(quality)[1].name)[:8])
        return struct.pack(">I", self.settings["seed"])

    # -- Codec interface --------------------------------------------------------------------
    def load(self) -> None:
        """Build or fetch the model of every quality, so that encode timings exclude it (the runner
        does not say which rate points it will ask for; pretrained=true downloads them all once)."""
        for quality in self.qualities:
            self.model(quality)

    def availability(self) -> Availability:
        if self.settings["device"].startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                return Availability(False, "device=cuda but no CUDA device is available")
        if self.settings["pretrained"]:
            missing = [q for q in self.qualities if self.official_url(q) is None]
            if missing:
                return Availability(
                    False,
                    f"CompressAI publishes no pretrained {self.settings['metric']} weights for {self.architecture} "
                    f"(qualities {', '.join(map(str, missing))}); use pretrained=false for random weights (testing only)",
                )
        return Availability(True)

    def version(self) -> str:
        weights = "pretrained" if self.settings["pretrained"] else f"random-weights({self.settings['seed']})"
        return f"compressai {package_version('compressai')} {self.architecture} {self.settings['metric']} {weights}"

    def describe(self) -> dict[str, Any]:
        if self.settings["pretrained"]:
            weights: Any = {q: url.rsplit("/", 1)[-1] for q in self.qualities if (url := self.official_url(q))}
        else:
            weights = f"random, torch.manual_seed({self.settings['seed']}) before building each quality's model"
        return {
            **self.settings,
            "architecture": self.architecture,
            "weights": weights,
            "colour": "RGB in [0, 1], no colour conversion",
            "padding": f"replicate to a multiple of {PAD_MULTIPLE}, cropped after decoding",
            "bitstream": "licbench header (architecture, metric, quality, weights, sizes, string lengths) + "
            "CompressAI strings + CRC-32; all bytes counted",
        }

    def encode(self, image: np.ndarray, rate: float, workdir: Path, timeout: float) -> Encoded:
        import torch

        from licbench.training.data import rgb_tensor
        from licbench.training.evaluate import pad_to_multiple

        check_rgb(image, self.name)
        quality = int(format_rate(self.name, self.rate_parameter, rate, 1, self.qualities[-1], True))
        height, width = image.shape[:2]
        if max(height, width) > _MAX_SIDE:
            raise CodecError(f"{self.name}: image {width}x{height} is larger than {_MAX_SIDE} pixels on a side")
        model = self.model(quality)
        x = rgb_tensor(image)[None]
        with torch.no_grad():
            compressed = model.compress(pad_to_multiple(x, PAD_MULTIPLE).to(self.settings["device"]))
        strings = [batch[0] for batch in compressed["strings"]]
        header = StreamHeader(
            self.architecture, self.settings["metric"], quality, self.settings["pretrained"], self.weights_id(quality),
            height, width, tuple(int(s) for s in compressed["shape"]), strings,
        )  # fmt: skip
        bitstream = pack_bitstream(header)
        return Encoded(bitstream, info={"quality": quality, "header_bytes": len(bitstream) - sum(map(len, strings))})

    def decode(self, bitstream: bytes, workdir: Path, timeout: float) -> np.ndarray:
        import torch

        from licbench.codecs.learned import _to_uint8

        header = unpack_bitstream(bitstream)
        made_by = (header.architecture, header.metric)
        if made_by != (self.architecture, self.settings["metric"]):
            raise CodecError(
                f"{self.name}: bitstream was made by compressai:{made_by[0]} metric={made_by[1]}, "
                f"not {self.name} metric={self.settings['metric']}"
            )
        if header.quality not in self.qualities:
            raise CodecError(f"{self.name}: bitstream quality {header.quality} is not one of {self.architecture}'s")
        ours = (self.settings["pretrained"], self.weights_id(header.quality))
        if (header.pretrained, header.weights_id) != ours:
            raise CodecError(
                f"{self.name}: bitstream was made with {_describe_weights(header.pretrained, header.weights_id)}, "
                f"this codec has {_describe_weights(*ours)}"
            )
        model = self.model(header.quality)
        try:
            with torch.no_grad():
                x_hat = model.decompress([[s] for s in header.strings], torch.Size(header.latent_shape))["x_hat"]
        except (AssertionError, IndexError, RuntimeError, TypeError, ValueError) as exc:
            raise CodecError(f"{self.name}: decoding failed: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        if x_hat.shape[-2] < header.height or x_hat.shape[-1] < header.width:
            raise CodecError(
                f"{self.name}: decoded {tuple(x_hat.shape[-2:])} is smaller than the header's {header.height}x{header.width}"
            )
        return _to_uint8(x_hat, header.height, header.width)


def _describe_weights(pretrained: bool, weights_id: bytes) -> str:
    if pretrained:
        return f"pretrained weights sha256 {weights_id.hex()}..."
    return f"random weights seed {struct.unpack('>I', weights_id)[0]}"


def _register_architectures() -> None:
    for architecture, n_qualities in ARCHITECTURE_QUALITIES.items():
        class_name = "CompressAI_" + re.sub(r"\W", "_", architecture)
        register(
            type(
                class_name,
                (CompressAIZooCodec,),
                {
                    "name": f"compressai:{architecture}",
                    "architecture": architecture,
                    "description": f"CompressAI zoo {architecture}, one model per quality (compressai.zoo)",
                    "default_rates": tuple(float(q) for q in range(1, n_qualities + 1)),
                    "__module__": __name__,
                },
            )
        )


_register_architectures()
