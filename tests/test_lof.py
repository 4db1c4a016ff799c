"""Latent overfitting (licbench.models.lof) with the shipped checkpoints: it lowers the real
rate-distortion cost of an image, the unchanged decoder reads its bitstreams bit-exactly, and what
it reports is what the coder writes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import kodak_image
from licbench.codecs.base import CodecError, CodecTimeout, codec_class, make_codec
from licbench.models.lof import LatentOverfitting, overfit_latent
from licbench.training.data import rgb_tensor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 2


def crop(height: int, width: int) -> np.ndarray:
    return np.ascontiguousarray(kodak_image(5)[:height, :width])


def real_cost(bitstream: bytes, decoded: np.ndarray, image: np.ndarray, lmbda: float) -> float:
    """bpp from the bytes written (header included) + lambda * 255^2 * MSE in [0, 1] units."""
    bpp = 8 * len(bitstream) / (image.shape[0] * image.shape[1])
    mse = np.mean((decoded.astype(np.float64) - image) ** 2) / 255.0**2
    return bpp + lmbda * 255.0**2 * mse


@pytest.mark.parametrize("name", ["msp", "hyperprior"])
def test_lof_lowers_the_real_rd_cost_and_the_plain_decoder_reads_it(name: str, tmp_path: Path):
    image = crop(120, 136)  # not a multiple of either model's stride: padding is exercised
    plain = codec_class(name)()
    overfitted = codec_class(name)(lof_iterations=10)
    lmbda = plain._loaded[0].rd_objective[1][RATE]

    reference = plain.encode(image, RATE, tmp_path, timeout=120)
    encoded = overfitted.encode(image, RATE, tmp_path, timeout=120)
    # The decoder is the plain codec's: LOF changes only what the encoder writes.
    decoded = plain.decode(encoded.bitstream, tmp_path, timeout=120)
    assert np.array_equal(decoded, encoded.reconstruction)
    assert encoded.bitstream != reference.bitstream
    info = encoded.info
    assert info["lof_iterations"] == 10 and 0 < info["lof_kept_iteration"] <= 10
    assert info["lof_cost_after"] < info["lof_cost_before"]
    before = real_cost(reference.bitstream, reference.reconstruction, image, lmbda)
    after = real_cost(encoded.bitstream, decoded, image, lmbda)
    assert after < before, (before, after)


def test_the_record_is_what_the_coder_writes():
    """The true cost LOF keeps is the cost of the latent it returns: estimated bits within the rANS
    coder's few bytes of the real streams, and exactly the PSNR of the decoded 8-bit image."""
    codec = codec_class("msp")()
    model = codec._loaded[0]
    image = crop(96, 128)
    x = rgb_tensor(image)[None]
    lmbda = model.rd_objective[1][RATE]
    latent, record = overfit_latent(model, x, RATE, lmbda, LatentOverfitting(8, learning_rate=0.005, check_every=4))

    compressed = model.compress(x, RATE, latent=latent)
    stream_bytes = sum(len(stream[0]) for stream in compressed["strings"])
    estimated_bytes = record["lof_estimated_bpp_after"] * image.shape[0] * image.shape[1] / 8
    assert abs(stream_bytes - estimated_bytes) <= 0.02 * estimated_bytes + 12, (stream_bytes, estimated_bytes)

    decoded = model.decode_bitstream(model.pack_bitstream(compressed, RATE))
    assert torch.equal(decoded["y_hat"], compressed["y_hat"])
    mse = (decoded["x_hat"].mul(255).round().div(255) - x).pow(2).mean().item()
    assert -10 * math.log10(mse) == pytest.approx(record["lof_psnr_after"], abs=2e-3)


def test_no_iterations_write_the_plain_bitstream(tmp_path: Path):
    image = crop(64, 80)
    plain = make_codec("msp").encode(image, RATE, tmp_path, timeout=120)
    zero = make_codec("msp-lof:lof_iterations=0").encode(image, RATE, tmp_path, timeout=120)
    assert zero.bitstream == plain.bitstream
    assert "lof_iterations" not in zero.info


def test_timeout_stops_latent_overfitting_between_iterations(tmp_path: Path):
    import time

    codec = codec_class("hyperprior")(lof_iterations=100_000)  # hours of work without the limit
    start = time.monotonic()
    with pytest.raises(CodecTimeout, match="hyperprior: stopped after the time limit of 1 s"):
        codec.encode(crop(64, 64), RATE, tmp_path, timeout=1)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize(
    "spec", ["msp:lof_iterations=-1", "msp-lof:lof_lr=0", "hyperprior:lof_check_every=0"]
)
def test_bad_lof_settings_are_refused_with_the_codec_name(spec: str):
    with pytest.raises(ValueError, match=f"codec '{spec.split(':')[0]}': lof_iterations must be"):
        make_codec(spec)


def test_compress_refuses_a_latent_of_the_wrong_shape():
    model = codec_class("msp")()._loaded[0]
    x = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match="latent shape"):
        model.compress(x, RATE, latent=torch.zeros(1, 96, 4, 8))


def test_autoregressive_lof_is_refused_with_the_reason(tmp_path: Path):
    """Its parallel estimate rounds y without the means, unlike its serial coder: a true cost
    measured with it would be wrong, so LOF says so instead of coding a worse latent."""
    codec = make_codec("autoregressive:lof_iterations=5")
    with pytest.raises(CodecError, match="autoregressive: latent overfitting needs .*AutoregressiveCodec's is not"):
        codec.encode(crop(32, 32), RATE, tmp_path, timeout=120)
