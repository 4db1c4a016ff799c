"""The VTM adapter without VTM: binary discovery, exact command lines, the raw 4:4:4 file it
writes and the Y4M file it reads, and the adapter's behaviour with real stand-in programs
(missing, crashing, hanging, and a lossless stand-in that speaks VTM's command line)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from licbench.codecs._shared import read_y4m, y4m_to_rgb
from licbench.codecs.base import CodecError, CodecTimeout, CodecUnavailable
from licbench.codecs.vtm import (
    INTRA_OPTIONS,
    UNAVAILABLE,
    VtmCodec,
    decoder_args,
    encoder_args,
    find_binary,
    find_vtm,
)
from licbench.colour import ColourPipeline

KODAK = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kodak"
PIPELINE = ColourPipeline("bt709", "full", 10, "444")
SLEEP = shutil.which("sleep")  # looked up before the tests empty PATH


@pytest.fixture(scope="module")
def odd_crop() -> np.ndarray:
    """97 wide x 131 high crop of kodim01."""
    return np.ascontiguousarray(np.asarray(Image.open(KODAK / "kodim01.png").convert("RGB"))[200:331, 300:397])


def write_program(folder: Path, name: str, body: str, interpreter: str = "/bin/sh") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{interpreter}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def vtm_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty LICBENCH_VTM_DIR and a PATH holding no VTM binaries."""
    folder = tmp_path / "vtm"
    folder.mkdir()
    empty_path = tmp_path / "empty-bin"
    empty_path.mkdir()
    monkeypatch.setenv("LICBENCH_VTM_DIR", str(folder))
    monkeypatch.setenv("PATH", str(empty_path))
    return folder


# ---------------------------------------------------------------------------------------------
# Discovery


def test_missing_binaries_make_the_codec_unavailable(vtm_dir: Path, odd_crop: np.ndarray, tmp_path: Path) -> None:
    codec = VtmCodec()
    assert codec.availability().ok is False
    assert codec.availability().reason == UNAVAILABLE
    assert "EncoderAppStatic/DecoderAppStatic not found in $LICBENCH_VTM_DIR or PATH" in UNAVAILABLE
    with pytest.raises(CodecUnavailable) as error:
        codec.encode(odd_crop, 32, tmp_path, timeout=10)
    assert str(error.value) == UNAVAILABLE
    with pytest.raises(CodecUnavailable):
        codec.decode(b"\x00\x00\x01", tmp_path, timeout=10)


def test_vtm_dir_wins_over_path_and_plain_names_are_accepted(tmp_path: Path) -> None:
    in_dir = write_program(tmp_path / "dir", "EncoderApp", "exit 0\n")
    on_path = write_program(tmp_path / "bin", "EncoderAppStatic", "exit 0\n")
    write_program(tmp_path / "bin", "DecoderAppStatic", "exit 0\n")
    assert find_binary(("EncoderAppStatic", "EncoderApp"), str(tmp_path / "dir"), str(tmp_path / "bin")) == in_dir
    assert find_binary(("EncoderAppStatic", "EncoderApp"), None, str(tmp_path / "bin")) == on_path
    assert find_vtm(str(tmp_path / "dir"), str(tmp_path / "nowhere")) is None  # no decoder there
    assert find_vtm(str(tmp_path / "dir"), str(tmp_path / "bin")) == (in_dir, tmp_path / "bin" / "DecoderAppStatic")


def test_non_executable_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "EncoderAppStatic").write_text("not a program")
    assert find_binary(("EncoderAppStatic",), str(tmp_path), str(tmp_path / "none")) is None


# ---------------------------------------------------------------------------------------------
# Command lines


def test_encoder_command_line() -> None:
    args = encoder_args(Path("/vtm/EncoderAppStatic"), Path("w/in.yuv"), Path("w/out.266"), 97, 131, "32", PIPELINE)
    intra = [f"--{key}={value}" for key, value in INTRA_OPTIONS]
    assert args == [
        "/vtm/EncoderAppStatic", *intra,
        "-i", "w/in.yuv", "-b", "w/out.266", "-wdt", "97", "-hgt", "131", "-fr", "1", "-f", "1", "-q", "32",
        "--InputBitDepth=10", "--InternalBitDepth=10", "--OutputBitDepth=10",
        "--InputChromaFormat=444", "--ChromaFormatIDC=444", "--ConformanceWindowMode=1",
    ]  # fmt: skip
    # The all-intra essentials of encoder_intra_vtm.cfg are there.
    assert {"--IntraPeriod=1", "--GOPSize=1", "--CTUSize=128", "--DualITree=1", "--ALF=1", "--IBC=0"} <= set(intra)


def test_user_cfg_replaces_the_builtin_options() -> None:
    args = encoder_args(Path("E"), Path("in.yuv"), Path("out.266"), 64, 48, "27", PIPELINE, cfg="/cfg/my.cfg")
    assert args[:3] == ["E", "-c", "/cfg/my.cfg"]
    assert not any(arg.startswith("--IntraPeriod") for arg in args)
    assert args[-6:] == [
        "--InputBitDepth=10", "--InternalBitDepth=10", "--OutputBitDepth=10",
        "--InputChromaFormat=444", "--ChromaFormatIDC=444", "--ConformanceWindowMode=1",
    ]  # fmt: skip


def test_decoder_command_line() -> None:
    assert decoder_args(Path("/vtm/DecoderAppStatic"), Path("w/in.266"), Path("w/out.y4m"), 10) == [
        "/vtm/DecoderAppStatic", "-b", "w/in.266", "-o", "w/out.y4m", "-d", "10",
    ]  # fmt: skip


def test_describe_records_pipeline_and_template() -> None:
    described = VtmCodec().describe()
    assert described["colour"]["chroma"] == "444" and described["colour"]["bit_depth"] == 10
    assert described["encode_command"].startswith("EncoderAppStatic --Profile=auto")
    assert "-wdt {width} -hgt {height}" in described["encode_command"] and "-q {qp}" in described["encode_command"]


# ---------------------------------------------------------------------------------------------
# The YUV files


def test_raw_444_file_and_y4m_read_back(odd_crop: np.ndarray, tmp_path: Path) -> None:
    raw = PIPELINE.to_raw(odd_crop)
    # Three full planes of 2-byte little-endian samples, Y first.
    assert len(raw) == 97 * 131 * 3 * 2
    y, _, _ = PIPELINE.rgb_to_planes(odd_crop)
    assert np.array_equal(np.frombuffer(raw[: 97 * 131 * 2], "<u2").reshape(131, 97), y)
    # What VTM's decoder writes for this picture (VideoIOYuv's Y4M header), read back.
    y4m = b"YUV4MPEG2 W97 H131 F50:1 Ip A0:0 C444p10\nFRAME\n" + raw
    rgb = y4m_to_rgb(read_y4m(y4m, "test"), PIPELINE, "test")
    assert rgb.shape == odd_crop.shape
    mse = np.mean((rgb.astype(float) - odd_crop) ** 2)
    assert mse < 0.1  # 10-bit 4:4:4 YCbCr is all but lossless for 8-bit RGB


# ---------------------------------------------------------------------------------------------
# Real stand-in programs


def install_decoder(vtm_dir: Path) -> None:
    write_program(vtm_dir, "DecoderAppStatic", "exit 0\n")


def test_crashing_encoder_is_a_codec_error(vtm_dir: Path, odd_crop: np.ndarray, tmp_path: Path) -> None:
    install_decoder(vtm_dir)
    write_program(vtm_dir, "EncoderAppStatic", "kill -SEGV $$\n")
    with pytest.raises(CodecError, match="SIGSEGV") as error:
        VtmCodec().encode(odd_crop, 32, tmp_path, timeout=10)
    assert not isinstance(error.value, (CodecTimeout, CodecUnavailable))


def test_failing_encoder_is_a_codec_error(vtm_dir: Path, odd_crop: np.ndarray, tmp_path: Path) -> None:
    install_decoder(vtm_dir)
    write_program(vtm_dir, "EncoderAppStatic", "echo 'ERROR: unknown option' >&2\nexit 1\n")
    with pytest.raises(CodecError, match="status 1: ERROR: unknown option"):
        VtmCodec().encode(odd_crop, 32, tmp_path, timeout=10)


def test_encoder_writing_nothing_is_a_codec_error(vtm_dir: Path, odd_crop: np.ndarray, tmp_path: Path) -> None:
    install_decoder(vtm_dir)
    write_program(vtm_dir, "EncoderAppStatic", "exit 0\n")
    with pytest.raises(CodecError, match="wrote no bitstream"):
        VtmCodec().encode(odd_crop, 32, tmp_path, timeout=10)


def test_hanging_encoder_times_out(vtm_dir: Path, odd_crop: np.ndarray, tmp_path: Path) -> None:
    install_decoder(vtm_dir)
    write_program(vtm_dir, "EncoderAppStatic", f"{SLEEP} 60\n")
    start = time.monotonic()
    with pytest.raises(CodecTimeout):
        VtmCodec().encode(odd_crop, 32, tmp_path, timeout=1)
    assert time.monotonic() - start < 10


# A lossless stand-in with VTM's command-line interface: the "bitstream" is the raw input file
# behind a small header. It checks the adapter's plumbing (files, sizes, formats), not VTM.
STAND_IN_ENCODER = """
import sys
args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1]
assert "--InputChromaFormat=444" in args and "--InputBitDepth=10" in args, args
raw = open(value("-i"), "rb").read()
header = f"STAND-IN {value('-wdt')} {value('-hgt')}\\n".encode()
open(value("-b"), "wb").write(header + raw)
"""
STAND_IN_DECODER = """
import sys
args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1]
data = open(value("-b"), "rb").read()
header, _, raw = data.partition(b"\\n")
fields = header.decode(errors="replace").split()
if len(fields) != 3 or fields[0] != "STAND-IN" or len(raw) != int(fields[1]) * int(fields[2]) * 6:
    sys.exit("ERROR: not a stand-in bitstream")
_, width, height = fields
assert value("-d") == "10", args
open(value("-o"), "wb").write(f"YUV4MPEG2 W{width} H{height} F50:1 Ip A0:0 C444p10\\nFRAME\\n".encode() + raw)
"""


def test_adapter_round_trip_through_stand_in_programs(vtm_dir: Path, odd_crop: np.ndarray, tmp_path: Path) -> None:
    write_program(vtm_dir, "EncoderAppStatic", STAND_IN_ENCODER, interpreter=sys.executable)
    write_program(vtm_dir, "DecoderAppStatic", STAND_IN_DECODER, interpreter=sys.executable)
    codec = VtmCodec()
    assert codec.availability().ok
    encoded = codec.encode(odd_crop, 32, tmp_path, timeout=30)
    assert encoded.bitstream == b"STAND-IN 97 131\n" + PIPELINE.to_raw(odd_crop)
    decoded = codec.decode(encoded.bitstream, tmp_path, timeout=30)
    assert np.array_equal(decoded, PIPELINE.from_raw(PIPELINE.to_raw(odd_crop), 131, 97))
    with pytest.raises(CodecError, match="not a stand-in bitstream"):
        codec.decode(b"garbage\n", tmp_path, timeout=30)


def test_missing_cfg_file_is_reported(vtm_dir: Path, odd_crop: np.ndarray, tmp_path: Path) -> None:
    write_program(vtm_dir, "EncoderAppStatic", STAND_IN_ENCODER, interpreter=sys.executable)
    install_decoder(vtm_dir)
    codec = VtmCodec(cfg=str(tmp_path / "missing.cfg"))
    assert not codec.availability().ok and "missing.cfg" in codec.availability().reason
    with pytest.raises(CodecError, match="missing.cfg does not exist"):
        codec.encode(odd_crop, 32, tmp_path, timeout=10)


def test_path_is_searched_when_vtm_dir_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    write_program(bin_dir, "EncoderApp", "exit 0\n")
    write_program(bin_dir, "DecoderApp", "exit 0\n")
    monkeypatch.delenv("LICBENCH_VTM_DIR", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + str(tmp_path / "other"))
    assert VtmCodec().binaries() == (bin_dir / "EncoderApp", bin_dir / "DecoderApp")
