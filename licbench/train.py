"""``licbench train``: train a learned codec, resume it, or export a shippable model file.

Examples::

    licbench train --model msp --data ../shared/data/train --out runs/msp.pt --steps 200000
    licbench train --out runs/msp.pt --resume                 # continue where it stopped
    licbench train --model hyperprior --init runs/msp.pt --freeze-transforms \\
        --data ../shared/data/train --out runs/hyperprior.pt   # same transforms, new entropy model
    licbench train --export runs/msp.pt --out licbench/zoo/msp-base.pt

This module is imported by the CLI for every command, so it imports nothing heavy at the top;
the work is in :mod:`licbench.training`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# licbench.models.MODEL_NAMES, repeated so that building the CLI parser imports no torch.
MODEL_CHOICES = ("msp", "checkerboard", "autoregressive", "hyperprior")


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _model_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare word is a string


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``licbench train`` options to ``parser``.

    Every training option defaults to None, "not given", so that ``--resume`` can take the
    checkpoint's value; a fresh run gets the defaults of
    :class:`licbench.training.loop.TrainSettings` (the help texts repeat them).
    """
    parser.epilog = "With --resume, every option not given takes the checkpoint's value."
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODEL_CHOICES, help="probability model (default msp)")
    model.add_argument("--profile", help="model profile, e.g. base or extra for msp (default: the model's)")
    model.add_argument("--transforms", choices=("small", "paper"), help="transform size (default small)")
    model.add_argument(
        "--model-option", action="append", type=_model_option, dest="model_options", metavar="KEY=VALUE",
        help="extra build_model keyword (JSON value, e.g. channels=32); repeatable",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, help="folder of training images, searched recursively (.png, .jpg)")
    data.add_argument("--crop", type=int, help="random crop size (default 256 on CUDA, 128 on CPU)")
    data.add_argument("--batch-size", type=int, help="crops per step (default 8)")
    data.add_argument("--val-images", type=int, help="images held out of --data for validation (default 4)")
    data.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    loss = parser.add_argument_group("loss and optimisation")
    loss.add_argument(
        "--lambdas", type=_float_list,
        help="one lambda per rate point, comma-separated; loss = bpp + lambda * 255^2 * MSE "
        "(default 0.0018,0.0035,0.0067,0.013,0.025,0.0483: about 0.1 to 1.5 bpp on Kodak)",
    )
    loss.add_argument(
        "--metric", choices=("mse", "ms-ssim"),
        help="distortion (default mse); ms-ssim: loss = bpp + lambda * (1 - MS-SSIM), default "
        "lambdas 2.40,4.58,8.73,16.64,31.73,60.50, needs --crop >= 161",
    )
    loss.add_argument("--lr", type=float, help="Adam learning rate, x0.1 from 80 %% and x0.01 from 95 %% of --steps (default 1e-4)")
    loss.add_argument(
        "--warmup-steps", type=int, metavar="W",
        help="ramp the learning rate linearly over the first W steps (default 0: none); for fine-tunes "
        "from a trained model, whose fresh Adam state would otherwise jolt every weight",
    )
    loss.add_argument("--aux-lr", type=float, help="Adam learning rate of the entropy bottleneck quantiles (default 1e-3)")
    loss.add_argument("--clip", type=float, help="gradient norm clipping (default 1.0)")
    loss.add_argument("--seed", type=int, help="seed of initialisation, data order, crops and validation split (default 0)")
    loss.add_argument("--init", type=Path, help="checkpoint to take g_a, g_s and the gain units from")
    loss.add_argument(
        "--freeze-transforms", action="store_const", const=True,
        help="keep the --init transforms and gains fixed: train the probability model only",
    )
    loss.add_argument(
        "--train-synthesis-only", action="store_const", const=True,
        help="train g_s and the decoder gains only: g_a, the encoder gains and the probability model "
        "stay as --init gives them, so every bitstream stays bit-identical and only the reconstruction "
        "changes (needs --init-whole or --init-probability)",
    )
    loss.add_argument(
        "--init-whole", action="store_const", const=True,
        help="--init copies the probability model too (same model and profile): fine-tune a trained "
        "model with other settings, e.g. --model-option 'quantizer=\"ste\"'",
    )
    loss.add_argument(
        "--init-probability", type=Path, metavar="CKPT",
        help="take the probability model from CKPT (same model and profile) and the transforms from "
        "--init: carry a trained probability model onto new transforms",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, help="checkpoint to write (training) or model file to write (--export)")
    run.add_argument("--steps", type=int, help="total optimisation steps (default 1000); 0 with --init: validate and save the model "
                     "assembled from the --init parts, untrained (then --export it)")
    run.add_argument(
        "--stop-at", type=int, metavar="STEP",
        help="end this session after STEP (checkpoint saved; the schedule still spans --steps); --resume later",
    )
    run.add_argument(
        "--time-limit", type=float, metavar="MINUTES",
        help="end this session cleanly (checkpoint saved) after the first step that ends past MINUTES of wall "
        "time, e.g. a GPU lease; --resume later",
    )
    run.add_argument("--resume", action="store_true", help="continue the run in --out if it exists")
    run.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    run.add_argument(
        "--val-every",
        type=int,
        help="validate every N steps (default 1000); the best held-out RD loss so far is also saved as NAME.best.EXT beside --out",
    )
    run.add_argument("--save-every", type=int, help="write the checkpoint every N steps (default 500)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--export", type=Path, metavar="CKPT",
        help="instead of training: write the shippable model file --out from training checkpoint CKPT "
        "(an exported model file, e.g. a committed candidate, is copied as it is, with its training record)",
    )
    run.add_argument(
        "--export-check", type=int, default=1, metavar="K",
        help="--export: measure the float16 cost on the first K held-out images (default 1; 0 skips)",
    )
    run.add_argument(
        "--export-precision", choices=["float16", "float32"], default="float16",
        help="--export: weights in float16 (default; entropy tables stay exact) or float32 (twice the "
        "size, for a model whose results the rounding moves)",
    )
    run.add_argument(
        "--zoo", metavar="NAME",
        help="--export: ship the model as zoo checkpoint NAME (licbench/zoo/NAME.pt + its zoo.json "
        "entry with sha256 and training record); --out is then optional",
    )
    run.add_argument(
        "--zoo-status", metavar="TEXT", default="",
        help="--zoo: what the checkpoint is good for (e.g. 'undertrained: ...'), shown with results",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``licbench train``; returns the exit status (130 after a Ctrl-C stop)."""
    from licbench.training.checkpoint import CHECKPOINT_FORMAT, export_checkpoint, load_checkpoint
    from licbench.training.loop import RUN_FIELDS, SESSION_FIELDS, resolve_settings, train

    if args.zoo is not None and args.export is None:
        raise ValueError("--zoo NAME ships an exported model: it needs --export CKPT")
    if args.zoo is not None:
        from licbench.models.zoo import zoo_file

        shipped = zoo_file(args.zoo)
        if args.out is not None and Path(args.out).resolve() != shipped.resolve():
            raise ValueError(f"--zoo {args.zoo} writes {shipped}: leave out --out")
        args.out = shipped
    if args.out is None:
        raise ValueError("licbench train needs --out (the checkpoint, or with --export the model file)")
    for name in ("stop_at", "val_every", "save_every", "threads", "crop", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.time_limit is not None and not args.time_limit > 0:
        raise ValueError(f"--time-limit must be > 0 minutes, got {args.time_limit:g}")
    for name in ("steps", "workers", "export_check"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
    if args.export is not None:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        exported = export_checkpoint(args.export, args.out, args.export_check, args.export_precision)
        if args.zoo is not None:
            from licbench.models.zoo import record_in_zoo

            exported["zoo_entry"] = record_in_zoo(args.zoo, exported, load_checkpoint(args.out), args.zoo_status)
        print(json.dumps(exported, indent=1))
        return 0

    explicit = {name: getattr(args, name, None) for name in RUN_FIELDS + SESSION_FIELDS}
    explicit["model_options"] = dict(args.model_options) if args.model_options else None
    explicit["progress"] = not args.no_progress
    explicit["out"] = str(args.out)

    resume_payload = None
    if args.out.exists():
        if not args.resume:
            raise ValueError(f"{args.out} exists: pass --resume to continue it, or choose another --out")
        resume_payload = load_checkpoint(args.out)
        if resume_payload["format"] != CHECKPOINT_FORMAT:
            raise ValueError(f"{args.out}: an exported model file cannot be resumed, only a training checkpoint")
    init_payload = load_checkpoint(args.init) if args.init is not None and resume_payload is None else None
    settings = resolve_settings(
        explicit,
        resume_payload["training"]["settings"] if resume_payload else None,
        init_payload["training"]["settings"] if init_payload else None,
    )
    result = train(settings, resume_payload, init_payload)
    return 130 if result.get("interrupted") else 0
