"""Checkpoints: atomic writes, safe loading, RNG state, and export of a shippable model file.

Both file kinds hold only plain data and tensors, so they load with
``torch.load(path, weights_only=True)`` (no pickled code runs):

* training checkpoint (``format`` = :data:`CHECKPOINT_FORMAT`): model config, state_dict,
  optimizer states, schedule, step, RNG states, training record and history; enough to resume.
* exported model (``format`` = :data:`MODEL_FORMAT`): model config, state_dict with the entropy
  coding tables, training record and history; what a codec adapter loads (:func:`load_model`).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from licbench.digest import file_digest

CHECKPOINT_FORMAT = "licbench-checkpoint-v1"
MODEL_FORMAT = "licbench-model-v1"


def _current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` with ``write(file)`` via a temporary file in the same folder and os.replace,
    so a crash mid-write never leaves a truncated file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions of a normally created file.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def save_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """torch.save ``payload`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint or exported model file, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises assorted types for foreign or damaged files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable checkpoint ({first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a licbench checkpoint (format {found!r})")
    return payload


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python global RNG states as tensors and plain lists."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "bit_generator": np_state[0],
            "key": np_state[1].tolist(),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["bit_generator"],
            np.asarray(np_state["key"], dtype=np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss_next"]))


def build_from_payload(payload: dict[str, Any]) -> torch.nn.Module:
    """The model described by a checkpoint or exported file, with its weights (float32)."""
    from licbench.models import build_model

    model = build_model(**payload["model"])
    # Exported files store most weights as float16; copying into the float32 model upcasts them.
    model.load_state_dict(payload["state_dict"])
    settings = payload.get("training", {}).get("settings", {})
    if "lambdas" in settings:  # what latent overfitting optimises for at each rate point
        model.rd_objective = (settings.get("metric", "mse"), list(settings["lambdas"]))
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A model ready to code images (eval mode, entropy tables present) from either file kind."""
    payload = load_checkpoint(path, map_location="cpu")
    model = build_from_payload(payload)
    if payload["format"] == CHECKPOINT_FORMAT:
        model.update(force=True)  # a training checkpoint has no coding tables yet
    return model.to(device).eval()


EXPORT_PRECISIONS = ("float16", "float32")


def _entropy_model_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """state_dict prefixes of every CompressAI entropy model (bottlenecks, Gaussian conditionals)."""
    from compressai.entropy_models import EntropyModel

    return tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, EntropyModel))


def shippable_state_dict(
    model: torch.nn.Module, precision: str = "float16"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state_dict for shipping, names of the tensors stored as float16).

    With ``precision="float16"``, float tensors of the transforms and context networks become
    float16 when every value stays finite; encoder and decoder both load these same rounded
    weights, so they stay in step. ``"float32"`` keeps every tensor as trained (twice the size,
    for models whose results the rounding moves: see the export check). Every
    tensor of an entropy model (quantiles, CDF tables, offsets, lengths, scale table, and the
    density parameters the tables were built from) keeps its dtype bit-exactly: the coder must see
    exactly the tables the model was updated with.
    """
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"export precision must be one of {EXPORT_PRECISIONS}, got {precision!r}")
    keep_exact = _entropy_model_prefixes(model)
    shipped, halved = {}, []
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if precision == "float16" and tensor.is_floating_point() and not name.startswith(keep_exact):
            half = tensor.to(torch.float16)
            if torch.isfinite(half).all():
                shipped[name] = half
                halved.append(name)
                continue
        shipped[name] = tensor.clone()
    return shipped, halved


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    check_images: int | Sequence[str | Path] = 1,
    precision: str = "float16",
) -> dict[str, Any]:
    """Write the shippable model file ``out`` from a training checkpoint and describe it.

    The file has the model config, a :func:`shippable_state_dict` including the entropy coding
    tables (``model.update(force=True)`` is run first), the training record and history.
    ``checkpoint`` may also be a file exported before (a committed candidate): it is copied byte
    for byte, so what ships is what was measured, with its own training record, and
    ``precision`` and ``check_images`` do not apply (its precision was chosen at its export).
    ``check_images`` (image paths, or a count K: the first K of the checkpoint's held-out
    validation images that still exist; 0 skips the check) measure what the ``precision``
    (:func:`shippable_state_dict`) costs: per rate point, bpp and PSNR with the float32 weights
    and with the shipped ones, on the whole images (slow on a CPU for big models: a few seconds
    per image and rate). Returns {"path", "sha256", "bytes", "step", "fp16_tensors",
    "exact_tensors", "check"}.
    """
    from licbench.training.data import image_tensor
    from licbench.training.evaluate import evaluate_images

    payload = load_checkpoint(checkpoint)
    if payload["format"] == MODEL_FORMAT:
        return _copy_model_file(Path(checkpoint), payload, Path(out))
    model = build_from_payload(payload).eval()
    model.update(force=True)
    state_dict, halved = shippable_state_dict(model, precision)
    save_atomic(
        {
            "format": MODEL_FORMAT,
            "model": payload["model"],
            "state_dict": state_dict,
            "step": payload["step"],
            "training": payload["training"],
            "history": payload["history"],
        },
        out,
    )
    if isinstance(check_images, int):
        held_out = [p for p in payload["training"]["data"]["val_files"] if Path(p).is_file()]
        check_images = held_out[:check_images]
    check: dict[str, Any] = {"images": [str(p) for p in check_images]}
    if check_images:
        images = [image_tensor(Path(p)) for p in check_images]
        lambdas = payload["training"]["settings"]["lambdas"]
        metric = payload["training"]["settings"]["metric"]
        full = evaluate_images(model, images, lambdas, metric)
        shipped = evaluate_images(load_model(out), images, lambdas, metric)
        check["float32"] = full
        check["shipped"] = shipped
        check["max_abs_delta_bpp"] = max(abs(a["bpp"] - b["bpp"]) for a, b in zip(full, shipped))
        check["max_abs_delta_psnr"] = max(abs(a["psnr"] - b["psnr"]) for a, b in zip(full, shipped))
    return _describe_model_file(Path(out), payload["step"], state_dict, halved, check)


def _copy_model_file(model_file: Path, payload: dict[str, Any], out: Path) -> dict[str, Any]:
    """export_checkpoint's result for an exported model file copied to ``out`` as it is."""
    try:  # refuse a file whose weights do not fit its model before shipping it
        build_from_payload(payload)
    except RuntimeError as exc:
        raise ValueError(f"{model_file}: its weights do not fit its model ({str(exc).strip().splitlines()[0]})") from None
    if model_file.resolve() != out.resolve():
        with model_file.open("rb") as source:
            write_atomic(out, lambda f: shutil.copyfileobj(source, f))
    state_dict = payload["state_dict"]
    halved = [name for name, tensor in state_dict.items() if tensor.dtype == torch.float16]
    return _describe_model_file(out, payload["step"], state_dict, halved, {"images": [], "copied_from": str(model_file)})


def _describe_model_file(
    out: Path, step: int, state_dict: dict[str, torch.Tensor], halved: list[str], check: dict[str, Any]
) -> dict[str, Any]:
    return {
        "path": str(out),
        "sha256": file_digest(out),
        "bytes": out.stat().st_size,
        "step": step,
        "fp16_tensors": len(halved),
        "exact_tensors": len(state_dict) - len(halved),
        "check": check,
    }
