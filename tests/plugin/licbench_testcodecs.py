"""A third-party codec plugin used by the tests: it registers through the ``licbench.codecs``
entry point group exactly as an external package would (see the .dist-info beside it).

``toy-quant`` is a real (if simple) lossy codec: uniform quantisation of the pixels followed by
zlib, with a small header. ``crashing`` and ``hanging`` drive real child processes that die by a
signal or never finish, and ``dying`` kills its own (worker) process, to exercise the harness's
error and timeout handling.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from licbench.codecs.base import Codec, CodecError, Encoded
from licbench.tools import run_tool

HEADER = struct.Struct(">4sIIB")
MAGIC = b"TOYQ"


class ToyQuant(Codec):
    name = "toy-quant"
    description = "uniform pixel quantisation + zlib (test plugin)"
    rate_parameter = "step"
    default_rates = (32.0, 16.0, 8.0, 4.0)
    rate_decreasing = True
    default_settings = {"delay": 0.0, "level": 6}

    def version(self) -> str:
        # TOY_QUANT_BUILD stands for a rebuilt encoder: the codec keeps its name, its version changes
        build = os.environ.get("TOY_QUANT_BUILD")
        return f"1.0{'+build' + build if build else ''} (zlib {zlib.ZLIB_VERSION})"

    def encode(self, image, rate, workdir: Path, timeout: float) -> Encoded:
        time.sleep(self.settings["delay"])
        step = int(rate)
        indices = (image.astype(np.int32) // step).astype(np.uint8)
        payload = zlib.compress(indices.tobytes(), self.settings["level"])
        header = HEADER.pack(MAGIC, image.shape[0], image.shape[1], step)
        return Encoded(header + payload, reconstruction=self._dequantise(indices, step))

    def decode(self, bitstream: bytes, workdir: Path, timeout: float) -> np.ndarray:
        if len(bitstream) < HEADER.size:
            raise CodecError("toy-quant bitstream is truncated")
        magic, height, width, step = HEADER.unpack_from(bitstream)
        if magic != MAGIC:
            raise CodecError("not a toy-quant bitstream")
        try:
            raw = zlib.decompress(bitstream[HEADER.size :])
        except zlib.error as exc:
            raise CodecError(f"corrupt toy-quant payload: {exc}") from None
        if len(raw) != height * width * 3:
            raise CodecError("toy-quant payload has the wrong size")
        return self._dequantise(np.frombuffer(raw, np.uint8).reshape(height, width, 3), step)

    @staticmethod
    def _dequantise(indices: np.ndarray, step: int) -> np.ndarray:
        return np.clip(indices.astype(np.int32) * step + step // 2, 0, 255).astype(np.uint8)


class Crashing(ToyQuant):
    name = "crashing"
    description = "a codec whose encoder process dies by SIGSEGV (test plugin)"

    def encode(self, image, rate, workdir: Path, timeout: float) -> Encoded:
        run_tool([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], timeout)
        raise AssertionError("unreachable: the child always crashes")


class Dying(ToyQuant):
    name = "dying"
    description = "a codec that kills the process it runs in, as a crash or the OOM killer would (test plugin)"

    def encode(self, image, rate, workdir: Path, timeout: float) -> Encoded:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: the process is gone")


class Hanging(ToyQuant):
    name = "hanging"
    description = "a codec whose encoder process never finishes (test plugin)"

    def encode(self, image, rate, workdir: Path, timeout: float) -> Encoded:
        run_tool(["sleep", "3600"], timeout)
        raise AssertionError("unreachable: the child always hangs")
