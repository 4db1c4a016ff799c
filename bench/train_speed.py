"""Training speed on this machine: seconds per optimisation step (forward, backward, both Adam
steps) and seconds to load one batch of random crops, per model and torch thread count.

    python bench/train_speed.py [--data ../shared/data/train] [--models msp,hyperprior]
        [--threads 1,2] [--crop 128] [--batch-size 8] [--steps 5]

Prints one line per (model, threads); the machine's load average is printed too, because the
figures are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from licbench.models import build_model
from licbench.training.data import RandomCrops, StepBatches, find_images
from licbench.training.loop import DEFAULT_LAMBDAS, split_parameters, train_step

REPO = Path(__file__).resolve().parents[1]


def seconds_per_step(model_name: str, batches: list[torch.Tensor], threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lambdas = torch.tensor(DEFAULT_LAMBDAS["mse"])
    model = build_model(model_name, n_rates=len(lambdas)).train()
    main, quantiles = split_parameters(model)
    optimizer, aux_optimizer = torch.optim.Adam(main, lr=1e-4), torch.optim.Adam(quantiles, lr=1e-3)
    rates = torch.arange(batches[0].shape[0]) % len(lambdas)
    train_step(model, batches[0], rates, lambdas, optimizer, aux_optimizer)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        train_step(model, batches[i % len(batches)], rates, lambdas, optimizer, aux_optimizer)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "train")
    parser.add_argument("--models", default="msp,hyperprior")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    crops = RandomCrops(find_images(args.data), args.crop)
    sampler = StepBatches(len(crops), args.batch_size, seed=0, start_step=0, end_step=3)
    start = time.perf_counter()
    batches = [torch.stack([crops[item] for item in batch]) for batch in sampler]
    load_s = (time.perf_counter() - start) / len(batches)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; torch {torch.__version__}")
    print(f"data: {load_s:.3f} s per batch of {args.batch_size} {args.crop}x{args.crop} crops (decode + crop, 1 process)")
    for model_name in args.models.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            seconds = seconds_per_step(model_name, batches, threads, args.steps)
            print(
                f"{model_name} small transforms, crop {args.crop}, batch {args.batch_size}, "
                f"{threads} thread(s): {seconds:.3f} s/step"
            )


if __name__ == "__main__":
    main()
