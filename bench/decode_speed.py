"""Decode time of the learned codecs on this CPU: MSP (base, extra) against the three baselines.

All models use the same transforms (default "small") and RANDOM weights: timings measure the
network passes and the entropy decoding, not compression quality. With random weights most latent
symbols are zero, so the entropy-coding share of the time is a lower bound. Model building,
encoding and one warm-up decode per model are excluded; the figure is the median of the repeats.

    python bench/decode_speed.py                      # 512x768 and 2048x1365, 3 repeats
    python bench/decode_speed.py --threads 1 --ar-repeats 1
    python bench/decode_speed.py --sizes 768x512 --compressai-loop
    python bench/decode_speed.py --device cuda        # on a GPU (clocks read after a synchronize)

Sizes are WIDTHxHEIGHT; images are replicate-padded to the model stride (not counted).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from compressai.latent_codecs import RasterScanLatentCodec
from PIL import Image

from licbench.models import TRANSFORM_CONFIGS, LearnedCodec, build_model
from licbench.training.data import rgb_tensor

KODAK_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak" / "kodim23.png"
MODELS: dict[str, tuple[str, str | None]] = {
    "msp-base": ("msp", "base"),
    "msp-extra": ("msp", "extra"),
    "checkerboard": ("checkerboard", None),
    "autoregressive": ("autoregressive", None),
    "hyperprior": ("hyperprior", None),
}


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT") from None
    return width, height


def test_image(width: int, height: int, stride: int) -> torch.Tensor:
    """A Kodak image resized to width x height, replicate-padded to the stride."""
    image = Image.open(KODAK_IMAGE).convert("RGB").resize((width, height), Image.BICUBIC)
    x = rgb_tensor(np.asarray(image))[None]
    return F.pad(x, (0, -width % stride, 0, -height % stride), mode="replicate")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it measures the work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_decodes(decode, repeats: int, device: torch.device) -> float:
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        decode()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def compressai_loop_decode(model: LearnedCodec, compressed: dict) -> None:
    """The autoregressive decode with CompressAI's own raster-scan loop (for reference)."""
    codec = model.latent_codec
    *y_strings, z_strings = compressed["strings"]
    params = codec["hyper"].decompress([z_strings], compressed["shape"]["hyper"])["params"]
    RasterScanLatentCodec.decompress(codec["y"], y_strings, compressed["shape"]["y"], params)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 768), (2048, 1365)])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--transforms", choices=sorted(TRANSFORM_CONFIGS), default="small")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ar-repeats", type=int, default=1, help="repeats, autoregressive model")
    parser.add_argument("--compressai-loop", action="store_true",
                        help="also time the autoregressive decode with CompressAI's own loop")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    torch.manual_seed(0)
    print(f"RANDOM weights, transforms={args.transforms} {TRANSFORM_CONFIGS[args.transforms]}, "
          f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    print(f"{'model':<16}{'size':>11}{'passes':>8}{'decoder kMAC/px':>17}{'decode s':>10}")
    seconds: dict[tuple[str, tuple[int, int]], float] = {}
    with torch.inference_mode():
        for name in args.models:
            model_name, profile = MODELS[name]
            model = build_model(model_name, profile, transforms=args.transforms).eval()
            model.update(force=True)
            model.to(device)
            rate = model.n_rates - 1
            warm = model.compress(test_image(64, 64, model.stride).to(device), rate)
            model.decompress(warm["strings"], warm["shape"], rate)
            for width, height in args.sizes:
                x = test_image(width, height, model.stride).to(device)
                compressed = model.compress(x, rate)
                repeats = args.ar_repeats if model_name == "autoregressive" else args.repeats
                seconds[name, (width, height)] = time_decodes(
                    lambda: model.decompress(compressed["strings"], compressed["shape"], rate), repeats, device
                )
                kmac = model.decoder_kmac_per_pixel(min(x.shape[-2], 256), min(x.shape[-1], 256))
                print(f"{name:<16}{f'{width}x{height}':>11}{model.sequential_passes(*x.shape[-2:]):>8}"
                      f"{kmac:>17.1f}{seconds[name, (width, height)]:>10.2f}", flush=True)
                if args.compressai_loop and model_name == "autoregressive":
                    stock = time_decodes(
                        lambda: compressai_loop_decode(model, compressed), args.ar_repeats, device
                    )
                    seconds["autoregressive (compressai loop)", (width, height)] = stock
                    print(f"{'  compressai loop':<16}{f'{width}x{height}':>11}{'':>25}{stock:>10.2f}")
    for width, height in args.sizes:
        for serial_name in ("autoregressive", "autoregressive (compressai loop)"):
            for name in ("msp-base", "msp-extra"):
                if (serial_name, (width, height)) in seconds and (name, (width, height)) in seconds:
                    speed_up = seconds[serial_name, (width, height)] / seconds[name, (width, height)]
                    print(f"speed-up {name} over {serial_name} at {width}x{height}: {speed_up:.1f}x")


if __name__ == "__main__":
    main()
