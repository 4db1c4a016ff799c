"""The learned-codec adapters (msp, msp-extra, checkerboard, autoregressive, hyperprior) with small
checkpoints written here: bit-exact round trips at odd sizes, self-checking bitstreams, checkpoint
checks (zoo sha256 pin, weights-only loading) and one run through the command line.

The checkpoints are tiny random models (16 channels) saved in the exported licbench-model-v1
format, float16 weights included. Untrained transforms put nearly every latent at zero, so the gain
units are scaled up before the coding tables are built: the entropy coders then have real symbols
to code and the two rate points give different bitstreams.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import licbench.models.zoo as zoo
from conftest import damaged_copies, kodak_image, licbench_cli
from licbench.codecs.base import Codec, CodecError, CodecTimeout, codec_class
from licbench.codecs.learned import pack_header, unpack_header
from licbench.models import build_model
from licbench.store import ResultStore
from licbench.training.checkpoint import MODEL_FORMAT, save_atomic, shippable_state_dict

TINY = {"channels": 16, "latent_channels": 16}
GAIN_SCALE = 8.0
N_RATES = 2
# codec name -> (model, profile, extra overrides); msp-extra keeps its 2x4 blocks, 4 scales and
# 4 seed channels (its sequential structure) with a smaller context network.
MODELS: dict[str, tuple[str, str | None, dict[str, int]]] = {
    "msp": ("msp", "base", {}),
    "msp-extra": ("msp", "extra", {"hidden_channels": 16, "res_blocks": 1}),
    "checkerboard": ("checkerboard", None, {}),
    "autoregressive": ("autoregressive", None, {}),
    "hyperprior": ("hyperprior", None, {}),
}
ODD_SIZES = [(37, 53), (97, 131)]
HYPERPRIOR_STRIDE = 32  # g_a downsamples 8x, h_a 4x more: images are padded to multiples of 32
ANALYSIS_STRIDE = 8


def expected_passes(name: str, height: int, width: int) -> int:
    """Sequential entropy-decoding rounds, from each model's definition (notes/msp-lof.md)."""
    if name == "msp":  # 3 scales x 3 phases (2x2 blocks) x (2 seed channels + 1), + the bottleneck
        return 3 * 3 * 3 + 1
    if name == "msp-extra":  # 4 scales x 6 phases (2x4 blocks) x (4 seed channels + 1), + 1
        return 4 * 6 * 5 + 1
    if name == "checkerboard":  # anchors, then non-anchors
        return 2
    if name == "hyperprior":  # every latent at once
        return 1
    # autoregressive: one position of the padded latent after another
    latent = [math.ceil(side / HYPERPRIOR_STRIDE) * HYPERPRIOR_STRIDE // ANALYSIS_STRIDE for side in (height, width)]
    return latent[0] * latent[1]


def write_checkpoint(path: Path, name: str, seed: int = 0) -> Path:
    """A random model for codec ``name`` in the exported format (what the adapter loads)."""
    model, profile, extra = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, profile, n_rates=N_RATES, **TINY, **extra).eval()
    with torch.no_grad():
        net.gains.mul_(GAIN_SCALE)
        net.inverse_gains.div_(GAIN_SCALE)
    net.update(force=True)
    state_dict, _ = shippable_state_dict(net)
    save_atomic(
        {"format": MODEL_FORMAT, "model": net.config, "state_dict": state_dict, "step": 0, "training": {}, "history": []},
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {name: write_checkpoint(folder / f"{name}.pt", name) for name in MODELS}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tmp_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty checkpoint zoo in tmp_path, in place of the package's (configuration, not a mock)."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    monkeypatch.setattr(zoo, "ZOO_DIR", folder)
    monkeypatch.setattr(zoo, "INDEX", folder / "zoo.json")
    return folder


def make(name: str, checkpoint: Path | str) -> Codec:
    return codec_class(name)(checkpoint=str(checkpoint))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def crop(height: int, width: int, index: int = 5) -> np.ndarray:
    return np.ascontiguousarray(kodak_image(index)[:height, :width])


def encode(codec: Codec, image: np.ndarray, rate: float, workdir: Path):
    return codec.encode(image, rate, workdir, timeout=120)


def decode(codec: Codec, bitstream: bytes, workdir: Path) -> np.ndarray:
    return codec.decode(bitstream, workdir, timeout=120)


@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_at_odd_size_is_bit_exact(name: str, size: tuple[int, int], checkpoints, tmp_path: Path):
    height, width = size
    image = crop(height, width)
    encoder = make(name, checkpoints[name])
    # A separate instance decodes: it needs nothing but the bytes and the checkpoint.
    decoder = make(name, checkpoints[name])
    lengths = []
    for rate in range(N_RATES):
        encoded = encode(encoder, image, rate, tmp_path)
        decoded = decode(decoder, encoded.bitstream, tmp_path)
        assert decoded.dtype == np.uint8 and decoded.shape == image.shape
        assert np.array_equal(decoded, encoded.reconstruction), "decoder differs from the encoder's reconstruction"
        tag, header_height, header_width, digest_prefix, _ = unpack_header(encoded.bitstream)
        assert (tag, header_height, header_width) == (encoder.tag, height, width)
        assert sha256_of(checkpoints[name]).startswith(digest_prefix)
        assert encoded.info["rate_index"] == rate
        assert encoder.complexity(height, width)["sequential_passes"] == expected_passes(name, height, width)
        lengths.append(len(encoded.bitstream))
    # the higher rate point (larger gains, finer quantisation) writes more bytes
    assert lengths[1] > lengths[0]


@pytest.mark.parametrize("name", ["msp", "msp-extra", "autoregressive"])
def test_timeout_stops_the_sequential_models_between_passes(name: str, checkpoints, tmp_path: Path):
    """--timeout reaches the in-process models: their loops check it between network passes."""
    codec = make(name, checkpoints[name])
    image = crop(64, 64)
    with pytest.raises(CodecTimeout, match=": stopped after the time limit of 0 s"):
        codec.encode(image, 1, tmp_path, timeout=0)
    bitstream = encode(codec, image, 1, tmp_path).bitstream  # the limit ended with the call
    with pytest.raises(CodecTimeout, match="time limit of 0 s"):
        codec.decode(bitstream, tmp_path, timeout=0)


def test_bits_per_pixel_follow_the_bytes_and_rate_index_is_checked(checkpoints, tmp_path: Path):
    codec = make("hyperprior", checkpoints["hyperprior"])
    small, large = crop(37, 53), crop(97, 131)
    # Same content per pixel at two sizes: more pixels, more bytes.
    assert len(encode(codec, large, 1, tmp_path).bitstream) > len(encode(codec, small, 1, tmp_path).bitstream)
    for bad_rate in (-1, N_RATES, 0.5):
        with pytest.raises(CodecError, match=r"rate_index must be an integer in \[0, 2\)"):
            encode(codec, small, bad_rate, tmp_path)
    with pytest.raises(CodecError, match="uint8 H x W x 3"):
        encode(codec, small[..., 0], 0, tmp_path)


@pytest.mark.parametrize(
    "tag, height, width",
    [("hyperprior", 1, 1), ("msp/extra", 37, 53), ("msp/base", 1 << 16, 1 << 16)],
)
def test_header_round_trip(tag: str, height: int, width: int):
    digest = hashlib.sha256(tag.encode()).hexdigest()
    payload = b"\x00payload\xff"
    assert unpack_header(pack_header(tag, height, width, digest) + payload) == (tag, height, width, digest[:16], payload)


def test_header_rejects_bad_fields():
    digest = "ab" * 32
    header = pack_header("hyperprior", 37, 53, digest)
    with pytest.raises(CodecError, match="bad magic"):
        unpack_header(b"XXXX" + header[4:])
    with pytest.raises(CodecError, match="version 7"):
        unpack_header(header[:4] + b"\x07" + header[5:])
    with pytest.raises(CodecError, match=r"image size 53x0"):
        unpack_header(pack_header("hyperprior", 0, 53, digest))
    with pytest.raises(CodecError, match="too short"):
        unpack_header(header[:10])


@pytest.mark.parametrize("name", list(MODELS))
def test_every_corruption_and_truncation_is_a_one_line_codec_error(name: str, checkpoints, tmp_path: Path):
    codec = make(name, checkpoints[name])
    bitstream = encode(codec, crop(37, 53), 1, tmp_path).bitstream
    for data in damaged_copies(bitstream):
        with pytest.raises(CodecError) as error:
            decode(codec, data, tmp_path)
        assert "\n" not in str(error.value) and str(error.value)
    # the undamaged bytes still decode after all that
    assert decode(codec, bitstream, tmp_path).shape == (37, 53, 3)


def test_bitstream_from_another_checkpoint_or_model_is_refused(checkpoints, tmp_path: Path):
    other = write_checkpoint(tmp_path / "hyperprior-seed1.pt", "hyperprior", seed=1)
    image = crop(37, 53)
    bitstream = encode(make("hyperprior", checkpoints["hyperprior"]), image, 0, tmp_path).bitstream
    with pytest.raises(CodecError, match="checkpoint") as error:
        decode(make("hyperprior", other), bitstream, tmp_path)
    assert other.name in str(error.value) and sha256_of(checkpoints["hyperprior"])[:16] in str(error.value)

    msp_bitstream = encode(make("msp", checkpoints["msp"]), image, 0, tmp_path).bitstream
    with pytest.raises(CodecError, match="made by msp/base, not hyperprior"):
        decode(make("hyperprior", checkpoints["hyperprior"]), msp_bitstream, tmp_path)


def test_checkpoint_of_another_model_is_refused(checkpoints):
    codec = make("hyperprior", checkpoints["msp"])
    with pytest.raises(CodecError, match=r"msp\.pt holds a msp/base model, not hyperprior"):
        codec.version()


def test_missing_checkpoint_is_unavailable_with_a_reason(tmp_path: Path, tmp_zoo: Path):
    missing = tmp_path / "nowhere.pt"
    availability = make("checkerboard", missing).availability()
    assert not availability.ok
    assert str(missing) in availability.reason and "neither a file nor a zoo name" in availability.reason
    with pytest.raises(CodecError, match="nowhere.pt"):
        encode(make("checkerboard", missing), crop(37, 53), 0, tmp_path)

    # no checkpoint named and none shipped: the reason says how to get one
    availability = codec_class("msp-extra")().availability()
    assert not availability.ok
    assert "no trained msp/extra checkpoint is shipped" in availability.reason
    assert "licbench train --model msp" in availability.reason


def test_zoo_checkpoint_is_used_by_default_and_refused_when_tampered(checkpoints, tmp_zoo: Path, tmp_path: Path):
    shipped = tmp_zoo / "hyperprior-tiny.pt"
    shutil.copyfile(checkpoints["hyperprior"], shipped)
    digest = sha256_of(shipped)
    entry = {"file": shipped.name, "sha256": digest, "model": "hyperprior", "profile": None}
    index = {"checkpoints": {"hyperprior-tiny": entry}}
    (tmp_zoo / "zoo.json").write_text(json.dumps(index))

    image = crop(37, 53)
    for codec in (codec_class("hyperprior")(), make("hyperprior", "hyperprior-tiny")):
        assert codec.availability().ok
        assert codec.version() == f"hyperprior hyperprior-tiny.pt sha256:{digest[:12]}"
        encoded = encode(codec, image, 1, tmp_path)
        assert np.array_equal(decode(codec, encoded.bitstream, tmp_path), encoded.reconstruction)

    data = bytearray(shipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shipped.write_bytes(bytes(data))
    codec = codec_class("hyperprior")()
    availability = codec.availability()
    assert not availability.ok
    assert f"sha256 {sha256_of(shipped)[:12]}... does not match the zoo's {digest[:12]}" in availability.reason
    with pytest.raises(CodecError, match="does not match the zoo's"):
        encode(codec, image, 1, tmp_path)


class RunsCodeWhenUnpickled:
    """Unpickling this calls ``Path.touch(marker)``: code that weights-only loading must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_with_a_pickled_object_is_refused(checkpoints, tmp_path: Path):
    payload = torch.load(checkpoints["hyperprior"], weights_only=True)
    marker = tmp_path / "code-ran"
    payload["training"] = {"note": RunsCodeWhenUnpickled(marker)}
    booby_trapped = tmp_path / "trapped.pt"
    torch.save(payload, booby_trapped)

    codec = make("hyperprior", booby_trapped)
    with pytest.raises(CodecError, match="trapped.pt: not a loadable checkpoint .*Weights only load failed"):
        encode(codec, crop(37, 53), 0, tmp_path)
    assert not marker.exists()
    # The file really is a trap: an ordinary unpickling runs its code.
    torch.load(booby_trapped, weights_only=False)
    assert marker.exists()


def test_cli_run_with_a_checkpoint_path(checkpoints, tmp_path: Path):
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = {"a.png": (165, 171), "b.png": (170, 163)}  # odd sizes, large enough for MS-SSIM
    for (file_name, (height, width)), index in zip(sizes.items(), (1, 23)):
        Image.fromarray(crop(height, width, index)).save(folder / file_name)
    spec = f"hyperprior:checkpoint={checkpoints['hyperprior']}"
    db = tmp_path / "results.sqlite"
    result = licbench_cli(
        "run", "--codecs", spec, "--dataset", str(folder), "--rates", f"{spec}=0,1", "--no-progress", "--run", "tiny",
        db=db, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with ResultStore(db) as store:
        rows = store.results("tiny")
    assert len(rows) == 4 and (rows["status"] == "ok").all(), rows[["status", "error"]]
    assert (rows["decoder_matches_encoder"] == 1).all()
    assert (rows["bpp"] == 8 * rows["bytes"] / (rows["width"] * rows["height"])).all()
    for row in rows.itertuples():
        info = json.loads(row.info)
        assert info["sequential_passes"] == 1 and info["rate_index"] == row.rate
    # The bytes the run measured are the bytes this process writes for the same image and rate.
    row = rows[(rows["image"] == "a.png") & (rows["rate"] == 1)].iloc[0]
    bitstream = encode(make("hyperprior", checkpoints["hyperprior"]), crop(165, 171, 1), 1, tmp_path).bitstream
    assert (len(bitstream), hashlib.sha256(bitstream).hexdigest()) == (row["bytes"], row["bitstream_sha256"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_checkpoint_is_pinned_and_codes_a_kodak_crop(name: str, tmp_path: Path):
    """What `licbench run --codecs NAME` uses on a fresh install: the package's own zoo entry
    (sha256-checked), a bit-exact round trip, and more bits and a better PSNR at the highest rate
    point than at the lowest (the gain units are trained, not random)."""
    entry = zoo.default_checkpoint(*MODELS[name][:2])
    assert entry is not None, f"no shipped checkpoint for {name}"
    codec = codec_class(name)()
    assert codec.availability().ok, codec.availability().reason
    assert codec.version().endswith(f"sha256:{entry.sha256[:12]}")
    image = crop(128, 128, index=5)
    sizes, psnrs = [], []
    for rate in (0, 5):
        encoded = encode(codec, image, rate, tmp_path)
        assert np.array_equal(decode(codec, encoded.bitstream, tmp_path), encoded.reconstruction)
        error = np.mean((encoded.reconstruction.astype(np.float64) - image) ** 2)
        sizes.append(len(encoded.bitstream))
        psnrs.append(10 * math.log10(255**2 / error))
    assert sizes[1] > sizes[0] and psnrs[1] > psnrs[0] + 1.0, (sizes, psnrs)


def test_shipped_models_share_one_set_of_transforms():
    """The comparison of probability models is fair only if every shipped model has the same g_a,
    g_s and gain units (TRAINING.md): a zoo file retrained on other transforms breaks this."""
    from licbench.training.checkpoint import load_checkpoint
    from licbench.training.loop import transform_keys

    entries = [zoo.default_checkpoint(model, profile) for model, profile, _ in MODELS.values()]
    assert all(entries), "every learned codec has a shipped checkpoint"
    payloads = {entry.name: load_checkpoint(entry.path) for entry in entries}
    first = payloads[entries[0].name]
    keys = transform_keys(build_model(**first["model"]))
    assert any(k.startswith("g_a.") for k in keys) and any(k.startswith("g_s.") for k in keys)
    for name, payload in payloads.items():
        differing = [k for k in keys if not torch.equal(payload["state_dict"][k], first["state_dict"][k])]
        assert not differing, f"{name}: {len(differing)} transform tensors differ from {entries[0].name}'s, e.g. {differing[0]}"
