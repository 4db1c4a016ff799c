"""The codec interface every adapter implements, and the registry that finds adapters by name.

An adapter is one module in ``licbench/codecs/`` that defines a :class:`Codec` subclass and
decorates it with :func:`register`. Third-party packages add codecs through the entry point
group ``licbench.codecs`` (``name = "package.module:CodecClass"``).
"""

from __future__ import annotations

import importlib
import threading
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

ENTRY_POINT_GROUP = "licbench.codecs"


class CodecError(RuntimeError):
    """A codec failed on one input (bad bitstream, crash, non-zero exit...)."""


class CodecTimeout(CodecError):
    """A codec ran past its time limit and was stopped."""


class CodecUnavailable(CodecError):
    """A codec cannot run on this machine (missing binary, missing library)."""


@dataclass
class Encoded:
    """What an encoder produced: the exact bytes written, and optionally its own reconstruction.

    Codecs that can reconstruct at the encoder (learned codecs) return it so that the harness can
    check the decoder reproduces it bit-exactly.
    """

    bitstream: bytes
    reconstruction: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


class Codec(ABC):
    """Encode an 8-bit RGB image (H x W x 3, uint8) to bytes and decode it back.

    ``settings`` are the codec's exact, user-overridable knobs (preset, colour pipeline...). The
    rate is one number per rate point (QP, quality...), named by ``rate_parameter``; the default
    points span about 0.1 to 2 bpp on Kodak.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    rate_parameter: ClassVar[str] = "quality"
    default_rates: ClassVar[tuple[float, ...]] = ()
    default_settings: ClassVar[dict[str, Any]] = {}
    # True when lower rate values mean more bits (QP-like), False when higher means more (quality).
    rate_decreasing: ClassVar[bool] = False

    def __init__(self, **settings: Any) -> None:
        unknown = set(settings) - set(self.default_settings)
        if unknown:
            raise ValueError(
                f"codec {self.name!r}: unknown setting(s) {sorted(unknown)}; "
                f"known: {sorted(self.default_settings)}"
            )
        self.settings: dict[str, Any] = {
            k: _coerce(settings.get(k, v), v) for k, v in self.default_settings.items()
        }

    def availability(self) -> Availability:
        """Whether the codec can run here; the reason says how to fix it when not."""
        return Availability(True)

    def load(self) -> None:
        """Load what encoding needs (a model, tables) so that timing excludes it; optional."""

    def complexity(self, height: int, width: int) -> dict[str, Any]:
        """Model cost figures for an image of that size (parameters, kMAC/pixel, sequential
        passes...), recorded with each result; measured outside the timed encode and decode."""
        return {}

    @abstractmethod
    def version(self) -> str:
        """The version of the underlying implementation (library, binary, model checkpoint)."""

    def describe(self) -> dict[str, Any]:
        """Exact settings plus anything else that defines the results (recorded with each row)."""
        return dict(self.settings)

    @abstractmethod
    def encode(self, image: np.ndarray, rate: float, workdir: Path, timeout: float) -> Encoded:
        """Encode ``image`` at rate point ``rate``. ``workdir`` is a private scratch folder."""

    @abstractmethod
    def decode(self, bitstream: bytes, workdir: Path, timeout: float) -> np.ndarray:
        """Decode the bytes produced by :meth:`encode` to an 8-bit RGB image."""


def _coerce(value: Any, default: Any) -> Any:
    """Settings given on the command line arrive as strings: give them the default's type."""
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return type(default)(value)


_REGISTRY: dict[str, type[Codec]] = {}
_LOADED = False
# A dask worker runs jobs in threads: none may look a codec up in a half-filled registry.
_LOAD_LOCK = threading.RLock()


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make an adapter available under ``cls.name``."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"codec name {cls.name!r} is registered twice ({existing} and {cls})")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _LOADED
    with _LOAD_LOCK:
        if _LOADED:
            return
        package = importlib.import_module("licbench.codecs")
        for module in pkgutil.iter_modules(package.__path__):
            if module.name != "base" and not module.name.startswith("_"):
                importlib.import_module(f"licbench.codecs.{module.name}")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            cls = ep.load()
            if cls.name != ep.name:
                raise ValueError(f"entry point {ep.name!r} loads codec named {cls.name!r}")
            register(cls)
        _LOADED = True


def codec_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def codec_class(name: str) -> type[Codec]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; known codecs: {', '.join(sorted(_REGISTRY))}") from None


def parse_codec_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"vvenc:preset=slow:threads=1"`` -> ``("vvenc", {"preset": "slow", "threads": "1"})``.

    A name may itself hold colons (``"compressai:mbt2018-mean:metric=mse"`` names the codec
    ``compressai:mbt2018-mean``): the settings start at the first part with an ``=``.
    """
    parts = spec.strip().split(":")
    first_setting = next((i for i, part in enumerate(parts) if "=" in part), len(parts))
    name, parts = ":".join(parts[:first_setting]), parts[first_setting:]
    settings: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"codec spec {spec!r}: expected name:key=value[:key=value...]")
        settings[key.strip()] = value.strip()
    return name.strip(), settings


def make_codec(spec: str) -> Codec:
    name, settings = parse_codec_spec(spec)
    return codec_class(name)(**settings)
