"""The training loop: settings, optimisers, learning-rate schedule, validation and checkpoints.

Variable rate: one model with ``n_rates`` rate points (gain units), each trained with its own
lambda. Every batch item gets a uniformly drawn rate index r_i and the loss of
:mod:`licbench.training.evaluate` with lambda_{r_i}.

Optimisers (CompressAI convention): Adam on every trainable parameter except the entropy
bottlenecks' ``.quantiles``, whose separate Adam minimises ``model.aux_loss()``. Gradients of the
main loss are clipped to norm ``clip``. Learning rate: ``lr`` until 80 % of ``steps``, then x0.1,
then x0.01 from 95 % (a step decay, a pure function of the step); with ``warmup_steps`` W > 0, the
first W steps ramp it linearly from lr/W to lr. A fine-tune from a shipped model file starts with
an empty Adam state, whose first updates move every weight by about lr whatever its gradient's
size: the ramp keeps that from undoing a trained model (session 11's joint run lost 15 % in its
first 1000 steps without one).

Exact resume: the data of step t is a pure function of (seed, t) (see
:mod:`licbench.training.data`); the only other randomness, the quantisation noise, comes from the
global torch RNG, whose state is saved; validation runs under a forked RNG. So on CPU with the
same thread count, N steps straight give bitwise the same parameters as k steps, a resume, and N-k
more, with any number of DataLoader workers. On CUDA, kernels are not bitwise deterministic, so a
resumed run is statistically, not bitwise, the same.

Best validation: besides ``out`` (the latest state, to resume), every validation whose held-out
RD loss (the sum over the rate points of the mean loss, :func:`held_out_loss`) is the lowest of
the run so far is saved as a complete checkpoint in :func:`best_checkpoint_path`. Later steps can
be worse on held-out images (session-4 and -6 logs: an MSP context during the lr decay), and the
best snapshot is what to export.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import random
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from licbench import signals
from licbench.digest import file_digest
from licbench.training.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_atomic,
)
from licbench.training.data import (
    RandomCrops,
    StepBatches,
    find_images,
    ignore_interrupts_in_worker,
    image_tensor,
    rate_indices,
    split_holdout,
    usable_for_crop,
)
from licbench.training.evaluate import METRICS, MS_SSIM_MIN_SIDE, evaluate_images, psnr, rd_terms

DEFAULT_LAMBDAS = {
    # CompressAI's lambdas for its MSE models: about 0.1 to 1.5 bpp on Kodak.
    "mse": (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483),
    # CompressAI's lambdas for its MS-SSIM models.
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50),
}
LR_MILESTONES = (0.80, 0.95)
LR_DECAY = 0.1
TRANSFORM_MODULES = ("g_a", "g_s")
LOSS_FORMULA = {
    "mse": "mean_i(bpp_i + lambda[r_i] * 255^2 * MSE_i), x in [0, 1], bpp from likelihoods",
    "ms-ssim": "mean_i(bpp_i + lambda[r_i] * (1 - MS-SSIM_i)), x in [0, 1], bpp from likelihoods",
}


@dataclasses.dataclass
class TrainSettings:
    """Everything a training run needs. The fields up to ``init_probability`` (:data:`RUN_FIELDS`)
    define the run and must stay the same when it is resumed; the rest (:data:`SESSION_FIELDS`)
    may change between sessions."""

    model: str
    data: str
    lambdas: list[float]
    crop: int
    profile: str | None = None
    transforms: str = "small"
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "mse"
    batch_size: int = 8
    lr: float = 1e-4
    aux_lr: float = 1e-3
    clip: float = 1.0
    warmup_steps: int = 0
    seed: int = 0
    val_images: int = 4
    init: str | None = None
    freeze_transforms: bool = False
    init_whole: bool = False
    init_probability: str | None = None
    train_synthesis_only: bool = False
    # Free to change on resume:
    out: str = "checkpoint.pt"
    steps: int = 1000
    stop_at: int | None = None
    time_limit: float | None = None  # minutes of wall time for this session
    device: str = "auto"
    threads: int | None = None
    workers: int = 0
    val_every: int = 1000
    save_every: int = 500
    progress: bool = True


SESSION_FIELDS = ("out", "steps", "stop_at", "time_limit", "device", "threads", "workers", "val_every", "save_every", "progress")
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainSettings) if f.name not in SESSION_FIELDS)


def resolve_settings(
    explicit: dict[str, Any], stored: dict[str, Any] | None = None, init_settings: dict[str, Any] | None = None
) -> TrainSettings:
    """Settings from the options given explicitly (None = not given).

    Resuming (``stored`` = the checkpoint's settings): an option not given takes the stored value
    (except ``stop_at`` and ``time_limit``); one of :data:`RUN_FIELDS` given with a different value is an error. A
    fresh run fills the gaps with defaults: lambdas and metric from the ``--init`` checkpoint's
    settings (``init_settings``) if there is one, else the metric's defaults; crop 256 on CUDA,
    128 on CPU; the rest from :class:`TrainSettings`.
    """
    given = {k: v for k, v in explicit.items() if v is not None}
    for name in ("data", "init", "init_probability"):  # compared and stored as absolute paths
        if name in given:
            given[name] = str(Path(given[name]).resolve())
    if stored is not None:
        conflicts = [
            f"{name}={given[name]!r} (checkpoint: {stored[name]!r})"
            for name in RUN_FIELDS
            # .get: settings added since (init_whole, init_probability) are absent from older checkpoints
            if name in given and given[name] != stored.get(name, TrainSettings.__dataclass_fields__[name].default)
        ]
        if conflicts:
            raise ValueError(f"--resume {given.get('out')}: settings differ from the checkpoint's: {'; '.join(conflicts)}")
        merged = {name: value for name, value in stored.items() if name in RUN_FIELDS + SESSION_FIELDS}
        # A stop step or a time limit ends one session; it is not carried over.
        merged["stop_at"] = merged["time_limit"] = None
        merged.update(given)
        return TrainSettings(**merged)
    if "data" not in given:
        raise ValueError("--data is required to start a training run")
    if init_settings is not None:
        given.setdefault("metric", init_settings["metric"])
        given.setdefault("lambdas", list(init_settings["lambdas"]))
    metric = given.setdefault("metric", "mse")
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: choose from {', '.join(METRICS)}")
    given.setdefault("lambdas", list(DEFAULT_LAMBDAS[metric]))
    given.setdefault("crop", 256 if select_device(given.get("device", "auto")).type == "cuda" else 128)
    return TrainSettings(**given)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """The warm-up and step decay of the module doc."""
    passed = sum(step >= int(fraction * settings.steps) for fraction in LR_MILESTONES)
    warmup = min(1.0, (step + 1) / settings.warmup_steps) if settings.warmup_steps > 0 else 1.0
    return settings.lr * warmup * LR_DECAY**passed


def transform_keys(model: torch.nn.Module) -> set[str]:
    """state_dict keys of g_a, g_s and the gain units (the model's own parameters named *gain*):
    what ``--init`` copies and ``--freeze-transforms`` freezes."""
    prefixes = tuple(f"{name}." for name in TRANSFORM_MODULES)
    gains = {name for name, _ in model.named_parameters(recurse=False) if "gain" in name.lower()}
    return {key for key in model.state_dict() if key.startswith(prefixes) or key in gains}


# The options that take weights from --init, by TrainSettings field.
OPTIONS_NEEDING_INIT = {
    "--freeze-transforms": "freeze_transforms",
    "--init-whole": "init_whole",
    "--init-probability": "init_probability",
    "--train-synthesis-only": "train_synthesis_only",
}
INIT_PARTS = {"transforms": "transform", "probability": "probability model", "whole": "model"}
# CompressAI's entropy-coding tables: derived from the densities by ``update()``, sized by it, and
# unused in training; an exported model file has them, a fresh model has empty ones. load_init skips
# them (export rebuilds them), so exported files serve --init, --init-probability and --init-whole too.
CODING_TABLES = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table")


def _is_coding_table(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in CODING_TABLES


# What --train-synthesis-only trains: the decoder side after the entropy decoder. Everything that
# decides the bitstream (g_a, the encoder gains, the probability model and its quantiles) stays fixed.
SYNTHESIS_PREFIXES = ("g_s.", "inverse_gains")


def load_init(model: torch.nn.Module, payload: dict[str, Any], source: str, part: str = "transforms") -> None:
    """Copy one part of a checkpoint payload into ``model``: "transforms" (g_a, g_s and the gain
    units), "probability" (every other tensor: the probability model) or "whole". ``source`` names
    the option and file in errors."""
    what = INIT_PARTS[part]
    state = model.state_dict()
    transforms = transform_keys(model)
    keys = {"transforms": transforms, "probability": state.keys() - transforms, "whole": set(state)}[part]
    wanted = {key: state[key] for key in keys if not _is_coding_table(key)}
    available = {key: value for key, value in payload["state_dict"].items() if not _is_coding_table(key)}
    missing = sorted(k for k in wanted if k not in available)
    if part != "transforms":  # the checkpoint's probability model must be this one, not a larger one
        missing += sorted(available.keys() - transforms - wanted.keys())
    if missing:
        raise ValueError(
            f"{source}: {missing[0]} is in only one of the checkpoint and this model "
            f"({len(missing)} {what} tensors differ): not the same {what}"
        )
    mismatched = [k for k in wanted if available[k].shape != wanted[k].shape]
    if mismatched:
        key = mismatched[0]
        raise ValueError(
            f"{source}: {key} has shape {tuple(available[key].shape)}, this model needs "
            f"{tuple(wanted[key].shape)}: the {what}s differ"
        )
    # CompressAI's load_state_dict wants every coding table of the modules it loads: keep the model's own
    own_tables = {key: state[key] for key in keys if _is_coding_table(key)}
    model.load_state_dict({**{k: available[k] for k in wanted}, **own_tables}, strict=False)


def split_parameters(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(main parameters, entropy bottleneck quantiles), trainable ones only."""
    main, quantiles = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (quantiles if name.endswith(".quantiles") else main).append(parameter)
    return main, quantiles


def train_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    rates: torch.Tensor,
    lambdas: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    aux_optimizer: torch.optim.Optimizer | None,
    metric: str = "mse",
    clip: float = 1.0,
) -> dict[str, float]:
    """One optimisation step on batch ``x`` with per-item rate indices ``rates``; returns the
    batch means of loss, bpp, mse and the aux loss. A non-finite loss raises FloatingPointError
    before any parameter changes."""
    optimizer.zero_grad(set_to_none=True)
    output = model(x, rates)
    terms = rd_terms(output, x, lambdas[rates], metric)
    loss = terms["loss"].mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the training loss is {loss.item()}")
    loss.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()
    aux_value = 0.0
    if aux_optimizer is not None:
        aux_optimizer.zero_grad(set_to_none=True)
        aux_loss = model.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()
        aux_value = aux_loss.item()
    return {"loss": loss.item(), "bpp": terms["bpp"].mean().item(), "mse": terms["mse"].mean().item(), "aux": aux_value}


class _StopRequest:
    """Ctrl-C or SIGTERM during training: the first one finishes the current step, saves and stops;
    a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def _graceful_interrupt() -> Iterator[_StopRequest]:
    stop = _StopRequest()
    with signals.handling(stop.handle):
        yield stop


def _mean_stats(window: list[dict[str, float]]) -> dict[str, float]:
    keys = ("loss", "bpp", "mse", "aux")
    means = {k: sum(s[k] for s in window) / len(window) for k in keys}
    means["psnr"] = psnr(means.pop("mse"))
    return means


def _versions() -> dict[str, str]:
    from licbench.provenance import _package_versions, git_revision

    versions = _package_versions(("torch", "compressai", "numpy", "licbench"))
    versions["git_revision"] = git_revision()
    return versions


def _names_digest(files: list[Path], root: Path) -> str:
    names = "\n".join(str(p.relative_to(root)) for p in files)
    return hashlib.sha256(names.encode()).hexdigest()


def best_checkpoint_path(out: str | Path) -> Path:
    """Where a run writing ``out`` keeps its best validation: ``NAME.best.EXT`` beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.best{out.suffix}")


def held_out_loss(entry: dict[str, Any]) -> float | None:
    """The RD loss of a history entry on the held-out images, summed over the rate points
    (None for an entry without validation images)."""
    return sum(record["loss"] for record in entry["val"]) if entry["val"] else None


def _best_entry(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The earliest history entry with the lowest held-out RD loss."""
    validated = [entry for entry in history if entry["val"]]
    return min(validated, key=held_out_loss) if validated else None


def _describe_validation(entry: dict[str, Any], best: bool) -> str:
    points = "  ".join(f"r{r['rate_index']} {r['bpp']:.3f} bpp {r['psnr']:.2f} dB" for r in entry["val"])
    return f"step {entry['step']} validation: {points}  RD loss {held_out_loss(entry):.3f}{' (best so far)' if best else ''}"


def train(
    settings: TrainSettings,
    resume_payload: dict[str, Any] | None = None,
    init_payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a training run, or continue it from ``resume_payload`` (the loaded ``settings.out``);
    ``init_payload`` is the loaded ``settings.init`` checkpoint of a fresh run. Returns a summary.

    Checkpoints go to ``settings.out`` every ``save_every`` steps, at the end, and on Ctrl-C.
    """
    from tqdm import tqdm

    from licbench.models import build_model
    from licbench.provenance import machine

    # A lent GPU comes with minutes, not steps: the session ends cleanly, checkpoint saved, once
    # the first step (or validation) ends past the limit, counted from here.
    deadline = time.monotonic() + 60 * settings.time_limit if settings.time_limit else None
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = select_device(settings.device)
    if settings.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be >= 0, got {settings.warmup_steps}")
    if settings.metric == "ms-ssim" and settings.crop < MS_SSIM_MIN_SIDE:
        raise ValueError(f"--metric ms-ssim needs --crop >= {MS_SSIM_MIN_SIDE}, got {settings.crop}")

    data_root = Path(settings.data)
    train_files, val_files = split_holdout(find_images(data_root), settings.val_images, settings.seed)
    train_files, too_small = usable_for_crop(train_files, settings.crop)
    if not train_files:
        raise ValueError(f"{data_root}: no training image is at least {settings.crop}x{settings.crop} (--crop)")
    data_record = {
        "folder": str(data_root),
        "train_images": len(train_files),
        "skipped_too_small": len(too_small),
        "train_names_sha256": _names_digest(train_files, data_root),
        "val_files": [str(p) for p in val_files],
    }
    if resume_payload is not None and resume_payload["training"]["data"]["train_names_sha256"] != data_record["train_names_sha256"]:
        raise ValueError(f"--resume: the images in {data_root} are not those the checkpoint was trained on")

    if resume_payload is None:  # a resumed run restores the RNG states instead
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        np.random.seed(settings.seed)
    model = build_model(settings.model, settings.profile, settings.transforms, len(settings.lambdas), **settings.model_options)
    if settings.crop % model.stride:
        raise ValueError(f"--crop {settings.crop} is not a multiple of the model's stride {model.stride}")
    val_images = [image_tensor(p) for p in val_files]
    for path, image in zip(val_files, val_images):
        if settings.metric == "ms-ssim" and min(image.shape[-2:]) < MS_SSIM_MIN_SIDE:
            raise ValueError(f"{path}: validation image smaller than {MS_SSIM_MIN_SIDE} pixels, too small for MS-SSIM")

    if settings.init_whole and settings.init_probability:
        raise ValueError("--init-whole and --init-probability both say where the probability model comes from: choose one")
    if settings.train_synthesis_only and settings.freeze_transforms:
        raise ValueError("--train-synthesis-only and --freeze-transforms freeze different parts: choose one")
    if settings.train_synthesis_only and settings.init and not (settings.init_whole or settings.init_probability):
        raise ValueError(
            "--train-synthesis-only keeps the probability model fixed: take a trained one with --init-whole or --init-probability"
        )
    if settings.init and resume_payload is None:
        if init_payload is None:
            init_payload = load_checkpoint(settings.init)
        if settings.freeze_transforms or settings.train_synthesis_only:
            init_settings = init_payload["training"]["settings"]
            if (init_settings["lambdas"], init_settings["metric"]) != (settings.lambdas, settings.metric):
                raise ValueError(
                    f"{'--freeze-transforms' if settings.freeze_transforms else '--train-synthesis-only'}: {settings.init} was trained for {init_settings['metric']} lambdas "
                    f"{init_settings['lambdas']}; frozen gain units only fit those"
                )
        load_init(model, init_payload, f"--init {settings.init}", "whole" if settings.init_whole else "transforms")
        if settings.init_probability:
            source = f"--init-probability {settings.init_probability}"
            load_init(model, load_checkpoint(settings.init_probability), source, "probability")
    elif not settings.init:
        needing = [o for o, on in OPTIONS_NEEDING_INIT.items() if getattr(settings, on)]
        if needing:
            raise ValueError(f"{needing[0]} needs --init CKPT to take the weights from")
    if settings.freeze_transforms:
        frozen = transform_keys(model)
        for name, parameter in model.named_parameters():
            if name in frozen:
                parameter.requires_grad_(False)
    if settings.train_synthesis_only:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(SYNTHESIS_PREFIXES))
    model.to(device).train()

    main_parameters, quantiles = split_parameters(model)
    optimizer = torch.optim.Adam(main_parameters, lr=settings.lr)
    aux_optimizer = torch.optim.Adam(quantiles, lr=settings.aux_lr) if quantiles else None

    step, history, window = 0, [], []
    training = {
        "settings": dataclasses.asdict(settings),
        "data": data_record,
        "loss": LOSS_FORMULA[settings.metric],
        "schedule": f"lr x{LR_DECAY} at {', '.join(f'{m:.0%}' for m in LR_MILESTONES)} of steps"
        + (f", linear warm-up over the first {settings.warmup_steps} steps" if settings.warmup_steps > 0 else ""),
        "elapsed_s": 0.0,
        "sessions": [],
    }
    if resume_payload is None:
        # The settings name the --init files by path, which only this machine can resolve; their
        # digests say which weights a run started from wherever the record is read.
        training["init_sha256"] = {
            name: file_digest(getattr(settings, name)) for name in ("init", "init_probability") if getattr(settings, name)
        }
    else:
        model.load_state_dict(resume_payload["state_dict"])
        optimizer.load_state_dict(resume_payload["optimizer"])
        if aux_optimizer is not None:
            aux_optimizer.load_state_dict(resume_payload["aux_optimizer"])
        restore_rng_state(resume_payload["rng"])
        step, history, window = resume_payload["step"], resume_payload["history"], resume_payload["window"]
        training["elapsed_s"] = resume_payload["training"]["elapsed_s"]
        training["sessions"] = resume_payload["training"]["sessions"]
        # Those of the files the run started from, not of whatever now sits at their paths (or
        # nothing: a resumed run does not read them); checkpoints older than the record have none.
        training["init_sha256"] = resume_payload["training"].get("init_sha256", {})
    session = {
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "start_step": step,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "workers": settings.workers,
        "machine": machine(),
        "versions": _versions(),
    }
    training["sessions"].append(session)
    prior_elapsed = training["elapsed_s"]
    session_start = time.perf_counter()

    def save(path: str | Path = settings.out) -> None:
        session["end_step"] = step
        session["elapsed_s"] = round(time.perf_counter() - session_start, 3)
        training["elapsed_s"] = round(prior_elapsed + session["elapsed_s"], 3)
        training["settings"] = dataclasses.asdict(settings)
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "model": model.config,
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "aux_optimizer": aux_optimizer.state_dict() if aux_optimizer is not None else None,
                "scheduler": {
                    "kind": "step-decay",
                    "milestones": [int(m * settings.steps) for m in LR_MILESTONES],
                    "gamma": LR_DECAY,
                    "warmup_steps": settings.warmup_steps,
                    "lr": learning_rate(step, settings),
                },
                "step": step,
                "rng": rng_state(),
                "training": training,
                "history": history,
                # Training statistics since the last history entry, so a resumed run's next
                # entry averages the same steps as an uninterrupted run's.
                "window": window,
            },
            path,
        )

    def validate() -> dict[str, Any]:
        """Validate, and record it with the mean training statistics since the last record."""
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            records = evaluate_images(model, val_images, settings.lambdas, settings.metric, device) if val_images else []
        entry = {
            "step": step,
            "elapsed_s": round(prior_elapsed + time.perf_counter() - session_start, 3),
            "lr": learning_rate(max(step - 1, 0), settings),
            "train": _mean_stats(window) if window else None,
            "val": records,
        }
        history.append(entry)
        return entry

    def validate_and_keep_best() -> None:
        """Validate; a new best held-out RD loss also goes to the best-validation checkpoint."""
        entry = validate()
        window.clear()
        if not entry["val"]:
            return
        best = _best_entry(history) is entry
        tqdm.write(_describe_validation(entry, best))
        if best:
            save(best_checkpoint_path(settings.out))

    print(
        f"training {settings.model} ({sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(settings.lambdas)} rate points) on {len(train_files)} images of {data_root} "
        f"({len(val_files)} held out{f', {len(too_small)} smaller than the crop skipped' if too_small else ''}); "
        f"device {session['device']}, {session['threads']} threads; steps {step} -> {settings.steps}"
    )
    if step == 0 and settings.steps == 0 and resume_payload is None:
        # Assembling a model from --init parts (e.g. new transforms with a trained probability model)
        # without training it: validate and save it as a checkpoint that --export takes.
        validate_and_keep_best()
        save()
        print(f"--steps 0: the assembled model is validated and saved to {settings.out}")
        return {"out": settings.out, "step": step, "elapsed_s": training["elapsed_s"], "history": history}
    if step >= settings.steps:
        print(f"{settings.out} is already at step {step} (>= --steps {settings.steps}): nothing to do")
        return {"out": settings.out, "step": step, "elapsed_s": training["elapsed_s"], "history": history}

    end_step = min(settings.steps, settings.stop_at or settings.steps)
    lambdas = torch.tensor(settings.lambdas, device=device)
    loader = torch.utils.data.DataLoader(
        RandomCrops(train_files, settings.crop),
        batch_sampler=StepBatches(len(train_files), settings.batch_size, settings.seed, step, end_step),
        num_workers=settings.workers,
        pin_memory=device.type == "cuda",
        # A private generator: otherwise the loader would draw its worker seed from the global
        # torch RNG, which the quantisation noise uses, and a resume would shift that stream.
        generator=torch.Generator(),
        worker_init_fn=ignore_interrupts_in_worker,
    )
    # From here on a stop request (Ctrl-C, SIGTERM) ends the current step and saves it.
    with _graceful_interrupt() as stop:
        if step == 0 and not history:  # the starting point of the validation curve
            validate_and_keep_best()
        running: deque[dict[str, float]] = deque(maxlen=50)
        out_of_time = False
        with tqdm(total=settings.steps, initial=step, unit="step", disable=not settings.progress, dynamic_ncols=True) as bar:
            for batch in loader:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, settings)
                rates = rate_indices(settings.seed, step, settings.batch_size, len(settings.lambdas)).to(device)
                try:
                    stats = train_step(
                        model, batch.to(device, non_blocking=True), rates, lambdas, optimizer, aux_optimizer,
                        settings.metric, settings.clip,
                    )
                except FloatingPointError as exc:
                    save()
                    raise RuntimeError(f"step {step + 1}: {exc}; the state before it is saved in {settings.out}") from None
                step += 1
                window.append(stats)
                running.append(stats)
                bar.update(1)
                summary = _mean_stats(list(running))
                bar.set_postfix(loss=f"{summary['loss']:.3f}", bpp=f"{summary['bpp']:.3f}", psnr=f"{summary['psnr']:.2f}")
                if step % settings.val_every == 0 or step == settings.steps:
                    validate_and_keep_best()
                out_of_time = deadline is not None and time.monotonic() >= deadline
                if step % settings.save_every == 0 or step == end_step or stop.requested or out_of_time:
                    save()
                if stop.requested or out_of_time:
                    break
    best = _best_entry(history)
    if best is not None:
        kept = best_checkpoint_path(settings.out)
        where = str(kept) if kept.exists() else "not kept: it predates best-validation checkpoints"
        print(f"best held-out validation: step {best['step']}, RD loss {held_out_loss(best):.3f} ({where})")
    if out_of_time:
        print(f"time limit of {settings.time_limit:g} min reached after step {step}")
    if step < settings.steps:
        print(f"stopped at step {step} of {settings.steps}; checkpoint saved to {settings.out}: run again with --resume to continue")
    return {"out": settings.out, "step": step, "elapsed_s": training["elapsed_s"], "history": history, "interrupted": stop.requested}
