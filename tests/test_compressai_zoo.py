"""The ``compressai:<architecture>`` codecs: faithful to CompressAI's own models, self-checking
bitstreams, and the pretrained-weights download against a real HTTP server on 127.0.0.1.

Random weights (pretrained=false) and bmshj2018-hyperprior at quality 1 on a 61x75 crop keep this
fast; the "pretrained" files are seeded random state_dicts served under CompressAI-style names.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.models import FactorizedPriorReLU
from compressai.zoo import image_models
from compressai.zoo.image import cfgs, model_urls

from conftest import damaged_copies, kodak_image
from licbench.codecs.base import Codec, CodecError, CodecUnavailable, codec_class, codec_names
from licbench.codecs.compressai_zoo import ARCHITECTURE_QUALITIES, MIRROR_ENV, PAD_MULTIPLE, unpack_bitstream
from licbench.training.data import rgb_tensor
from licbench.training.evaluate import pad_to_multiple

ARCH = "bmshj2018-hyperprior"
NAME = f"compressai:{ARCH}"
FAKE_OFFICIAL = "https://compressai.invalid/models/v1"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(kodak_image(5)[:61, :75])


def make(**settings) -> Codec:
    return codec_class(NAME)(**settings)


def compressai_model(seed: int, quality: int = 1):
    """CompressAI's own zoo builder with random weights, seeded as the adapter seeds them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = image_models[ARCH](quality=quality, metric="mse", pretrained=False)
    model.update(force=True)
    return model.eval()


def test_architectures_are_compressai_zoo_image_models():
    fixed_rate = {name for name in image_models if not name.endswith("-vbr")}
    assert set(ARCHITECTURE_QUALITIES) == fixed_rate
    for architecture, n_qualities in ARCHITECTURE_QUALITIES.items():
        assert sorted(cfgs[architecture]) == list(range(1, n_qualities + 1))
        cls = codec_class(f"compressai:{architecture}")
        assert cls.default_rates == tuple(float(q) for q in range(1, n_qualities + 1))
    assert {f"compressai:{a}" for a in ARCHITECTURE_QUALITIES} <= set(codec_names())


def test_listing_codecs_imports_neither_torch_nor_compressai():
    code = (
        "import sys\nfrom licbench.codecs.base import codec_names\nnames = codec_names()\n"
        "assert 'compressai:mbt2018' in names, names\nprint(sorted({'torch', 'compressai'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_round_trip_is_compressai_coding(image: np.ndarray, tmp_path: Path):
    encoder = make(pretrained=False)
    encoder.load()  # what the runner does before timing: every quality's model, built once
    encoded = encoder.encode(image, 1, tmp_path, 60)
    assert encoded.reconstruction is None  # not claimed: see the module docstring
    decoded = make(pretrained=False).decode(encoded.bitstream, tmp_path, 60)  # a separate instance
    assert decoded.dtype == np.uint8 and decoded.shape == image.shape

    # The same image through CompressAI's own model: same strings, same decoded pixels.
    reference = compressai_model(seed=0)
    x = rgb_tensor(image)[None]
    with torch.no_grad():
        out = reference.compress(pad_to_multiple(x, PAD_MULTIPLE))
        x_hat = reference.decompress(out["strings"], out["shape"])["x_hat"]
    expected = x_hat[0, :, :61, :75].mul(255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(decoded, expected)
    header = unpack_bitstream(encoded.bitstream)
    assert header.strings == [batch[0] for batch in out["strings"]]
    assert (header.architecture, header.metric, header.quality, header.pretrained) == (ARCH, "mse", 1, False)
    assert (header.height, header.width, header.latent_shape) == (61, 75, tuple(out["shape"]))
    strings_bytes = sum(map(len, header.strings))
    assert encoded.info["header_bytes"] == len(encoded.bitstream) - strings_bytes > 0


def test_weights_metric_and_architecture_must_match(image: np.ndarray, tmp_path: Path):
    bitstream = make(pretrained=False).encode(image, 1, tmp_path, 60).bitstream
    other_seed = make(pretrained=False, seed=1)
    other_bitstream = other_seed.encode(image, 1, tmp_path, 60).bitstream
    assert unpack_bitstream(other_bitstream).strings != unpack_bitstream(bitstream).strings
    with pytest.raises(CodecError, match="made with random weights seed 0, this codec has random weights seed 1"):
        other_seed.decode(bitstream, tmp_path, 60)
    with pytest.raises(CodecError, match="metric=mse, not compressai:bmshj2018-hyperprior metric=ms-ssim"):
        make(pretrained=False, metric="ms-ssim").decode(bitstream, tmp_path, 60)
    with pytest.raises(CodecError, match="made by compressai:bmshj2018-hyperprior"):
        codec_class("compressai:mbt2018-mean")(pretrained=False).decode(bitstream, tmp_path, 60)


def test_bad_settings_and_rates_are_refused(image: np.ndarray, tmp_path: Path):
    for rate in (0, 9, 1.5):
        with pytest.raises(CodecError, match="quality must be"):
            make(pretrained=False).encode(image, rate, tmp_path, 60)
    with pytest.raises(ValueError, match="metric must be one of"):
        make(metric="psnr")
    with pytest.raises(ValueError, match="seed must be in"):
        make(seed=-1)
    relu = codec_class("compressai:bmshj2018-factorized-relu")
    assert "publishes no pretrained mse weights" in relu().availability().reason
    assert relu(pretrained=False).availability().ok


def test_factorized_relu_builds_its_own_class():
    # compressai.zoo's own bmshj2018_factorized_relu() builds a FactorizedPrior (GDN) instead
    model = codec_class("compressai:bmshj2018-factorized-relu")(pretrained=False).model(1)
    assert type(model) is FactorizedPriorReLU


def test_every_corruption_and_truncation_is_a_one_line_codec_error(image: np.ndarray, tmp_path: Path):
    codec = make(pretrained=False)
    bitstream = codec.encode(image, 1, tmp_path, 60).bitstream
    for data in damaged_copies(bitstream):
        with pytest.raises(CodecError) as error:
            codec.decode(data, tmp_path, 60)
        assert str(error.value) and "\n" not in str(error.value)
    assert codec.decode(bitstream, tmp_path, 60).shape == image.shape


# -- pretrained weights from a real HTTP server ------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path):
    """(folder, base URL) of an HTTP server on 127.0.0.1 serving the folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch.hub cache; weights land in <TORCH_HOME>/hub/checkpoints."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert Path(torch.hub.get_dir()) == home / "hub"
    return home / "hub" / "checkpoints"


def serve_weights(folder: Path, monkeypatch: pytest.MonkeyPatch, payload: object, name_hash: str | None = None) -> Path:
    """Save ``payload`` in ``folder`` under a CompressAI-style name (``name_hash``, by default the
    file's own sha256 prefix) and point CompressAI's quality-1 MSE URL at that name."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    name = f"{ARCH}-1-{name_hash or hashlib.sha256(data).hexdigest()[:8]}.pth.tar"
    (folder / name).write_bytes(data)
    monkeypatch.setitem(model_urls[ARCH]["mse"], 1, f"{FAKE_OFFICIAL}/{name}")
    return folder / name


def seeded_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A state_dict as saved from a DataParallel wrapper: CompressAI's key renaming must strip the
    ``module.`` prefixes."""
    return {f"module.{key}": value for key, value in compressai_model(seed).state_dict().items()}


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def test_pretrained_weights_download_verify_and_load(served, torch_home: Path, monkeypatch, image, tmp_path: Path):
    folder, url = served
    source = serve_weights(folder, monkeypatch, seeded_state_dict(seed=7))
    monkeypatch.setenv(MIRROR_ENV, url)
    codec = make()
    assert codec.availability().ok and codec.version().endswith(f"{ARCH} mse pretrained")
    encoded = codec.encode(image, 1, tmp_path, 60)

    cached = torch_home / source.name
    assert cached.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in torch_home.iterdir()) == [source.name]
    assert all(isinstance(v, torch.Tensor) for v in torch.load(cached, weights_only=True).values())
    header = unpack_bitstream(encoded.bitstream)
    assert header.pretrained and header.weights_id.hex() == source.name[-16:-8]

    # The served weights are those of the seed-7 random model: same strings, same pixels.
    random_twin = make(pretrained=False, seed=7)
    twin_bitstream = random_twin.encode(image, 1, tmp_path, 60).bitstream
    assert unpack_bitstream(twin_bitstream).strings == header.strings
    # Decoded by a new instance from the cache, the server gone (the mirror setting beats the env).
    served_elsewhere = make(mirror=closed_port_url())
    decoded = served_elsewhere.decode(encoded.bitstream, tmp_path, 60)
    assert np.array_equal(decoded, random_twin.decode(twin_bitstream, tmp_path, 60))


def test_download_not_matching_its_name_is_refused_and_not_kept(served, torch_home, monkeypatch, image, tmp_path: Path):
    folder, url = served
    source = serve_weights(folder, monkeypatch, seeded_state_dict(seed=7), name_hash="0badc0de")
    with pytest.raises(CodecError, match=r"sha256 mismatch \(expected 0badc0de, got") as error:
        make(mirror=url).encode(image, 1, tmp_path, 60)
    assert source.name in str(error.value) and "\n" not in str(error.value)
    assert not torch_home.exists() or not any(torch_home.iterdir())


def test_cached_file_not_matching_its_name_is_refused(torch_home: Path, monkeypatch, image, tmp_path: Path):
    torch_home.mkdir(parents=True)
    name = f"{ARCH}-1-0badc0de.pth.tar"
    monkeypatch.setitem(model_urls[ARCH]["mse"], 1, f"{FAKE_OFFICIAL}/{name}")
    (torch_home / name).write_bytes(b"not the weights")
    with pytest.raises(CodecError, match="not the 0badc0de its name promises; delete it"):
        make(mirror=closed_port_url()).encode(image, 1, tmp_path, 60)


class RunsCodeWhenUnpickled:
    """Unpickling this calls ``Path.touch(marker)``: code that weights-only loading must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_file_with_pickled_code_is_refused(served, torch_home: Path, monkeypatch, image, tmp_path: Path):
    folder, url = served
    marker = tmp_path / "code-ran"
    payload = {**seeded_state_dict(seed=7), "trap": RunsCodeWhenUnpickled(marker)}
    serve_weights(folder, monkeypatch, payload)
    with pytest.raises(CodecError, match="refused by weights-only loading"):
        make(mirror=url).encode(image, 1, tmp_path, 60)
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(served, torch_home, monkeypatch, image, tmp_path: Path):
    folder, url = served
    serve_weights(folder, monkeypatch, codec_class("compressai:mbt2018-mean")(pretrained=False).model(1).state_dict())
    with pytest.raises(CodecError, match="does not fit the architecture"):
        make(mirror=url).encode(image, 1, tmp_path, 60)


def test_offline_without_cached_weights_says_what_to_do(torch_home: Path, monkeypatch, image, tmp_path: Path):
    mirror = closed_port_url()
    monkeypatch.setenv(MIRROR_ENV, mirror)
    codec = make()
    with pytest.raises(CodecUnavailable) as error:
        codec.encode(image, 1, tmp_path, 60)
    message = str(error.value)
    file_name = model_urls[ARCH]["mse"][1].rsplit("/", 1)[1]
    assert f"{mirror}{file_name}" in message and f"place {file_name} in {torch_home}" in message
    assert MIRROR_ENV in message and "pretrained=false" in message and "\n" not in message
    # remembered: the next image fails at once with the same error, without a new download
    with pytest.raises(CodecUnavailable) as again:
        codec.encode(image, 1, tmp_path, 60)
    assert again.value is error.value
