"""VVC reference software (VTM) encoder/decoder binaries: all intra, 4:4:4 10-bit YCbCr.

VTM is not bundled: the adapter looks for its binaries in ``$LICBENCH_VTM_DIR`` and then on
PATH. The command lines are built by pure functions (tested without VTM).
"""

from __future__ import annotations

import os
import re
import shutil
from functools import lru_cache
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from licbench.codecs._shared import check_rgb, format_rate, read_y4m, y4m_to_rgb
from licbench.codecs.base import Availability, Codec, CodecError, CodecUnavailable, Encoded, register
from licbench.colour import ColourPipeline
from licbench.tools import run_tool

ENCODER_NAMES = ("EncoderAppStatic", "EncoderApp")
DECODER_NAMES = ("DecoderAppStatic", "DecoderApp")
UNAVAILABLE = (
    "VTM binaries EncoderAppStatic/DecoderAppStatic not found in $LICBENCH_VTM_DIR or PATH; build VTM "
    "(https://vcgit.hhi.fraunhofer.de/jvet/VVCSoftware_VTM, cmake) and set LICBENCH_VTM_DIR, or use the "
    "'vvenc' codec / the published VTM 18.0 anchor instead"
)

# The settings of VTM's cfg/encoder_intra_vtm.cfg (VTM 15..18), except the file names, QP and
# InternalBitDepth, which the adapter sets itself.
INTRA_OPTIONS: tuple[tuple[str, str], ...] = (
    ("Profile", "auto"), ("MaxCUWidth", "64"), ("MaxCUHeight", "64"),
    ("IntraPeriod", "1"), ("DecodingRefreshType", "1"), ("GOPSize", "1"),
    ("FastSearch", "1"), ("SearchRange", "64"), ("HadamardME", "1"), ("FEN", "1"), ("FDM", "1"),
    ("MaxDeltaQP", "0"), ("MaxCuDQPSubdiv", "0"), ("DeltaQpRD", "0"), ("RDOQ", "1"), ("RDOQTS", "1"),
    ("DeblockingFilterOffsetInPPS", "1"), ("DeblockingFilterDisable", "0"),
    ("DeblockingFilterBetaOffset_div2", "0"), ("DeblockingFilterTcOffset_div2", "0"),
    ("DeblockingFilterCbBetaOffset_div2", "0"), ("DeblockingFilterCbTcOffset_div2", "0"),
    ("DeblockingFilterCrBetaOffset_div2", "0"), ("DeblockingFilterCrTcOffset_div2", "0"),
    ("DeblockingFilterMetric", "0"),
    ("SAO", "1"), ("TransformSkip", "1"), ("TransformSkipFast", "1"), ("TransformSkipLog2MaxSize", "5"),
    ("SAOLcuBoundary", "0"),
    ("SEIDecodedPictureHash", "0"), ("CbQpOffset", "0"), ("CrQpOffset", "0"), ("SameCQPTablesForAllChroma", "1"),
    ("QpInValCb", "17 27 32 44"), ("QpOutValCb", "17 29 34 41"), ("TemporalSubsampleRatio", "8"),
    ("ReWriteParamSets", "1"),
    ("CTUSize", "128"), ("LCTUFast", "1"), ("DualITree", "1"), ("MinQTLumaISlice", "8"),
    ("MinQTChromaISliceInChromaSamples", "4"), ("MinQTNonISlice", "8"), ("MaxMTTHierarchyDepth", "3"),
    ("MaxMTTHierarchyDepthISliceL", "3"), ("MaxMTTHierarchyDepthISliceC", "3"),
    ("MTS", "1"), ("MTSIntraMaxCand", "4"), ("MTSInterMaxCand", "4"), ("SBT", "1"), ("LFNST", "1"), ("ISP", "1"),
    ("Affine", "1"), ("SbTMVP", "1"), ("MaxNumMergeCand", "6"), ("LMChroma", "1"), ("DepQuant", "1"),
    ("IMV", "1"), ("ALF", "1"), ("IBC", "0"), ("AllowDisFracMMVD", "1"), ("AffineAmvr", "0"),
    ("LMCSEnable", "1"), ("LMCSSignalType", "0"), ("LMCSUpdateCtrl", "1"), ("LMCSOffset", "2"),
    ("MRL", "1"), ("MIP", "1"), ("JointCbCr", "1"), ("ChromaTS", "1"),
    ("PBIntraFast", "1"), ("ISPFast", "1"), ("FastMrg", "1"), ("AMaxBT", "1"), ("FastMIP", "1"), ("FastLFNST", "1"),
    ("AffineAmvrEncOpt", "0"), ("ALFAllowPredefinedFilters", "1"), ("ALFStrengthTargetLuma", "1.0"),
    ("ALFStrengthTargetChroma", "1.0"), ("CCALFStrengthTarget", "1.0"),
)  # fmt: skip


def find_binary(names: tuple[str, ...], vtm_dir: str | None, search_path: str | None) -> Path | None:
    """The first of ``names`` found as an executable in ``vtm_dir``, else on ``search_path``."""
    if vtm_dir:
        for name in names:
            candidate = Path(vtm_dir) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    for name in names:
        found = shutil.which(name, path=search_path)
        if found:
            return Path(found)
    return None


def find_vtm(vtm_dir: str | None, search_path: str | None) -> tuple[Path, Path] | None:
    """(encoder, decoder) paths, or None when either is missing."""
    encoder = find_binary(ENCODER_NAMES, vtm_dir, search_path)
    decoder = find_binary(DECODER_NAMES, vtm_dir, search_path)
    return (encoder, decoder) if encoder and decoder else None


def encoder_args(
    encoder: Path, raw: Path, bitstream: Path, width: int | str, height: int | str, qp: str,
    pipeline: ColourPipeline, cfg: str = "",
) -> list[str]:  # fmt: skip
    """The VTM encoder command for one picture of raw planar YCbCr. A user ``cfg`` replaces the
    built-in all-intra options; the input description and QP always follow (they override)."""
    coding = ["-c", cfg] if cfg else [f"--{key}={value}" for key, value in INTRA_OPTIONS]
    depth, chroma = str(pipeline.bit_depth), pipeline.chroma
    return [
        str(encoder), *coding,
        "-i", str(raw), "-b", str(bitstream), "-wdt", str(width), "-hgt", str(height),
        "-fr", "1", "-f", "1", "-q", qp,
        f"--InputBitDepth={depth}", f"--InternalBitDepth={depth}", f"--OutputBitDepth={depth}",
        f"--InputChromaFormat={chroma}", f"--ChromaFormatIDC={chroma}",
        "--ConformanceWindowMode=1",  # pad to the minimum CU size, crop back on output
    ]  # fmt: skip


def decoder_args(decoder: Path, bitstream: Path, y4m: Path, bit_depth: int) -> list[str]:
    """The VTM decoder command; a .y4m output name makes VTM write a Y4M file (size + format)."""
    return [str(decoder), "-b", str(bitstream), "-o", str(y4m), "-d", str(bit_depth)]


@lru_cache(maxsize=None)
def _encoder_version(encoder: Path) -> str:
    """VTM prints its version when it encodes (its help exits with status 1); encode a small
    grey picture to read it."""
    pipeline = ColourPipeline("bt709", "full", 10, "444")
    with TemporaryDirectory(prefix="licbench-vtm-") as tmp:
        raw, bitstream = Path(tmp) / "probe.yuv", Path(tmp) / "probe.266"
        raw.write_bytes(pipeline.to_raw(np.full((64, 64, 3), 128, np.uint8)))
        out = run_tool(encoder_args(encoder, raw, bitstream, 64, 64, "37", pipeline), timeout=120, cwd=Path(tmp))
    match = re.search(r"VTM Encoder Version (\S+)", out.stdout.decode(errors="replace"))
    return match.group(1) if match else "unknown"


@register
class VtmCodec(Codec):
    name = "vtm"
    description = "VVC reference software VTM, all intra, YCbCr 4:4:4 10-bit (external binaries)"
    rate_parameter = "qp"
    # From the published VTM 18.0 all-intra Kodak anchor: ~1.9 bpp at QP 19, ~0.1 bpp at QP 43.
    default_rates = (19.0, 23.0, 27.0, 31.0, 35.0, 39.0, 43.0)
    rate_decreasing = True
    # cfg: path of a VTM .cfg replacing the built-in all-intra options ("" = built-in).
    default_settings = {"cfg": "", "matrix": "bt709", "range": "full"}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.pipeline = ColourPipeline(self.settings["matrix"], self.settings["range"], 10, "444")

    def binaries(self) -> tuple[Path, Path]:
        found = find_vtm(os.environ.get("LICBENCH_VTM_DIR"), os.environ.get("PATH"))
        if found is None:
            raise CodecUnavailable(UNAVAILABLE)
        return found

    def availability(self) -> Availability:
        if find_vtm(os.environ.get("LICBENCH_VTM_DIR"), os.environ.get("PATH")) is None:
            return Availability(False, UNAVAILABLE)
        if self.settings["cfg"] and not Path(self.settings["cfg"]).is_file():
            return Availability(False, f"vtm: cfg file {self.settings['cfg']} does not exist")
        return Availability(True)

    def version(self) -> str:
        encoder, _ = self.binaries()
        return f"VTM {_encoder_version(encoder)} ({encoder})"

    def describe(self) -> dict[str, Any]:
        encoder, decoder = Path(ENCODER_NAMES[0]), Path(DECODER_NAMES[0])
        template = encoder_args(encoder, Path("in.yuv"), Path("out.266"), "{width}", "{height}", "{qp}",
                                self.pipeline, self.settings["cfg"])  # fmt: skip
        return {
            **self.settings,
            "colour": self.pipeline.describe(),
            "padding": "none: VTM pads to its minimum CU size and signals a conformance window",
            "encode_command": " ".join(template),
            "decode_command": " ".join(decoder_args(decoder, Path("in.266"), Path("out.y4m"), 10)),
        }

    def encode(self, image: np.ndarray, rate: float, workdir: Path, timeout: float) -> Encoded:
        check_rgb(image, self.name)
        encoder, _ = self.binaries()
        qp = format_rate(self.name, self.rate_parameter, rate, -12.0, 63.0, integer=True)
        cfg = self.settings["cfg"]
        if cfg and not Path(cfg).is_file():
            raise CodecError(f"vtm: cfg file {cfg} does not exist")
        height, width = image.shape[:2]
        raw, bitstream = workdir / "in.yuv", workdir / "out.266"
        raw.write_bytes(self.pipeline.to_raw(image))
        run_tool(encoder_args(encoder, raw, bitstream, width, height, qp, self.pipeline, cfg), timeout, cwd=workdir)
        data = bitstream.read_bytes() if bitstream.exists() else b""
        if not data:
            raise CodecError(
                f"vtm: {encoder.name} exited normally but wrote no bitstream for {width}x{height}, QP {qp}"
            )
        return Encoded(bitstream=data)

    def decode(self, bitstream: bytes, workdir: Path, timeout: float) -> np.ndarray:
        _, decoder = self.binaries()
        if not bitstream:
            raise CodecError("vtm: empty bitstream")
        stream, y4m = workdir / "dec.266", workdir / "dec.y4m"
        stream.write_bytes(bitstream)
        run_tool(decoder_args(decoder, stream, y4m, self.pipeline.bit_depth), timeout, cwd=workdir)
        source = f"vtm: {decoder.name} output {y4m.name}"
        if not y4m.exists():
            raise CodecError(f"{source} was not written")
        return y4m_to_rgb(read_y4m(y4m.read_bytes(), source), self.pipeline, source)
