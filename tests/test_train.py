"""licbench train: data pipeline, loss, exact resume, checkpoints, --freeze-transforms, export.

Tiny models (16 channels) on 192x160 crops of three training images keep this fast on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compressai.entropy_models import EntropyModel
from PIL import Image

from licbench.cli import main as cli_main
from licbench.training.checkpoint import CHECKPOINT_FORMAT, MODEL_FORMAT, build_from_payload, load_model
from licbench.training.data import RandomCrops, StepBatches, find_images, split_holdout
from licbench.training.loop import TrainSettings, held_out_loss, learning_rate, split_parameters, train_step, transform_keys

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = REPO.parent / "shared" / "data" / "train" / "cq100"
TINY = ["--model-option", "channels=16", "--model-option", "latent_channels=16"]
RUN = [
    "--data-placeholder",
    "--crop", "64", "--batch-size", "2", "--lambdas", "0.005,0.05", "--lr", "1e-3",
    "--val-images", "1", "--val-every", "4", "--threads", "1", "--steps", "8", "--no-progress",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """192x160 crops of three CQ100 training images in a nested folder (found recursively)."""
    sources = sorted(TRAIN_IMAGES.glob("*.png"))[:3]
    if len(sources) < 3:
        pytest.fail(f"{TRAIN_IMAGES} is missing: the tests need ../shared/data/train beside the repository")
    folder = tmp_path_factory.mktemp("train")
    (folder / "sub").mkdir()
    for i, source in enumerate(sources):
        target = folder / ("sub" if i else "") / source.name
        Image.open(source).convert("RGB").crop((0, 0, 192, 160)).save(target)
    return folder


def train_args(data_dir: Path, out: Path, *extra: str, model: str = "hyperprior") -> list[str]:
    args = [str(data_dir) if a == "--data-placeholder" else a for a in RUN]
    return ["train", "--model", model, *TINY, "--data", *args, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def straight_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 steps in one go."""
    out = tmp_path_factory.mktemp("straight") / "run.pt"
    threads = torch.get_num_threads()
    try:
        assert cli_main(train_args(data_dir, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def moved_run(data_dir: Path, straight_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """straight_run fine-tuned whole for 2 steps at a high learning rate: the same model on new transforms."""
    out = tmp_path_factory.mktemp("moved") / "moved.pt"
    threads = torch.get_num_threads()
    try:
        assert cli_main(train_args(data_dir, out, "--init", str(straight_run), "--init-whole", "--lr", "1e-2", "--steps", "2")) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def revalidated_loss(model: torch.nn.Module, run: dict) -> float:
    """The held-out RD loss of ``model`` on ``run``'s validation images, computed as training does."""
    from licbench.training.data import image_tensor
    from licbench.training.evaluate import evaluate_images

    val_images = [image_tensor(Path(f)) for f in run["training"]["data"]["val_files"]]
    return sum(r["loss"] for r in evaluate_images(model, val_images, [0.005, 0.05], "mse"))


def test_importing_the_cli_module_does_not_import_torch():
    code = "import sys, licbench.train; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_cli_model_choices_are_the_models():
    from licbench.models import MODEL_NAMES
    from licbench.train import MODEL_CHOICES

    assert set(MODEL_CHOICES) == set(MODEL_NAMES)


def test_data_order_and_crops_are_functions_of_seed_and_step(data_dir: Path):
    files = find_images(data_dir)
    assert len(files) == 3 and any(f.parent.name == "sub" for f in files)
    train, val = split_holdout(files, 1, seed=7)
    assert (train, val) == split_holdout(list(reversed(files)), 1, seed=7)
    assert sorted(train + val) == sorted(files) and not set(train) & set(val)

    sampler = StepBatches(n_images=3, batch_size=2, seed=5, start_step=0, end_step=6)
    batches = list(sampler)
    assert list(StepBatches(3, 2, 5, start_step=4, end_step=6)) == batches[4:]
    positions = [item[0] for batch in batches for item in batch]
    for epoch in range(4):  # without replacement within each epoch of 3 images
        assert sorted(positions[3 * epoch : 3 * epoch + 3]) == [0, 1, 2]
    assert batches != list(StepBatches(3, 2, 6, 0, 6))

    crops = RandomCrops(files, 64)
    first, again = crops[batches[0][0]], crops[batches[0][0]]
    assert first.shape == (3, 64, 64) and torch.equal(first, again)
    assert not torch.equal(first, crops[(batches[0][0][0], batches[0][0][1] + 1)])


def test_loss_falls_on_a_fixed_batch(data_dir: Path):
    from licbench.models import build_model

    torch.manual_seed(0)
    model = build_model("hyperprior", n_rates=2, channels=16, latent_channels=16).train()
    crops = RandomCrops(find_images(data_dir), 64)
    batch = torch.stack([crops[(0, 1)], crops[(1, 2)]])
    rates = torch.tensor([0, 1])
    lambdas = torch.tensor([0.005, 0.05])
    main, quantiles = split_parameters(model)
    optimizer = torch.optim.Adam(main, lr=1e-3)
    aux_optimizer = torch.optim.Adam(quantiles, lr=1e-3)
    losses = [train_step(model, batch, rates, lambdas, optimizer, aux_optimizer)["loss"] for _ in range(40)]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, losses


def test_checkpoint_is_plain_data_with_history(straight_run: Path):
    ckpt = load(straight_run)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["step"] == 8
    assert ckpt["model"]["model"] == "hyperprior" and ckpt["model"]["n_rates"] == 2
    for key in ("state_dict", "optimizer", "aux_optimizer", "scheduler", "rng", "training", "history"):
        assert key in ckpt
    settings = ckpt["training"]["settings"]
    assert settings["lambdas"] == [0.005, 0.05] and settings["crop"] == 64
    assert ckpt["training"]["elapsed_s"] > 0 and ckpt["training"]["sessions"][0]["end_step"] == 8
    assert [entry["step"] for entry in ckpt["history"]] == [0, 4, 8]
    final = ckpt["history"][-1]
    assert final["train"]["loss"] > 0
    assert [r["rate_index"] for r in final["val"]] == [0, 1]
    assert all(r["bpp"] > 0 and 0 < r["psnr"] < 60 for r in final["val"])
    assert not list(straight_run.parent.glob("*.tmp")), "temporary files left behind"


def test_sigterm_finishes_the_step_saves_and_the_run_resumes(data_dir: Path, tmp_path: Path):
    """``kill PID`` (a batch system's time limit) stops training as Ctrl-C does: the current step
    ends, the checkpoint is saved at it, and --resume goes on from there."""
    out = tmp_path / "killed.pt"
    args = train_args(data_dir, out, "--steps", "100000", "--val-every", "100000", "--save-every", "100000")
    proc = subprocess.Popen([sys.executable, "-m", "licbench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stdout:  # the loop starts after the step-0 validation
        if line.startswith("step 0 validation"):
            break
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    stopped = load(out)
    assert 1 <= stopped["step"] < 100000
    assert f"stopped at step {stopped['step']} of 100000; checkpoint saved" in stdout
    assert cli_main(["train", "--out", str(out), "--resume", "--steps", str(stopped["step"] + 1), "--no-progress"]) == 0
    assert load(out)["step"] == stopped["step"] + 1


def test_resume_after_stop_is_bitwise_equal_to_a_straight_run(data_dir: Path, straight_run: Path, tmp_path: Path):
    out = tmp_path / "resumed.pt"
    assert cli_main(train_args(data_dir, out, "--stop-at", "5")) == 0
    stopped = load(out)
    assert stopped["step"] == 5
    # Workers in the second session: the data is a function of the step, so they change nothing.
    assert cli_main(["train", "--out", str(out), "--resume", "--workers", "2", "--no-progress"]) == 0
    resumed, straight = load(out), load(straight_run)
    assert resumed["step"] == straight["step"] == 8
    assert resumed["state_dict"].keys() == straight["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert any(not torch.equal(stopped["state_dict"][k], v) for k, v in straight["state_dict"].items())
    for key, value in straight["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][key]["exp_avg_sq"], value["exp_avg_sq"])
    without_time = lambda history: [{k: v for k, v in e.items() if k != "elapsed_s"} for e in history]  # noqa: E731
    assert without_time(resumed["history"]) == without_time(straight["history"])
    assert [s["start_step"] for s in resumed["training"]["sessions"]] == [0, 5]


def test_time_limit_ends_a_session_with_a_resumable_checkpoint(data_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "timed.pt"
    assert cli_main(train_args(data_dir, out, "--steps", "100000", "--time-limit", "0.02")) == 0  # 1.2 s
    stopped = load(out)
    assert 1 <= stopped["step"] < 100000
    assert f"time limit of 0.02 min reached after step {stopped['step']}" in capsys.readouterr().out
    assert stopped["training"]["settings"]["steps"] == 100000  # the schedule is the whole run's
    # The limit ended that session only: the next one runs to its own stop step.
    assert cli_main(["train", "--out", str(out), "--resume", "--stop-at", str(stopped["step"] + 2), "--no-progress"]) == 0
    assert load(out)["step"] == stopped["step"] + 2


def test_best_validation_is_kept_as_a_complete_checkpoint(data_dir: Path, straight_run: Path, tmp_path: Path):
    from licbench.training.loop import best_checkpoint_path

    # A learning rate far too high: the held-out loss rises after step 0 (deterministic on CPU).
    out = tmp_path / "diverging.pt"
    assert cli_main(train_args(data_dir, out, "--lr", "3e-2")) == 0
    for run in (straight_run, out):
        final, best = load(run), load(best_checkpoint_path(run))
        losses = {entry["step"]: held_out_loss(entry) for entry in final["history"]}
        best_step = min(losses, key=losses.get)
        assert best["format"] == CHECKPOINT_FORMAT and best["step"] == best_step
        assert best["history"] == final["history"][: len(best["history"])]
        # It holds that step's weights: validating them again gives the recorded loss.
        assert revalidated_loss(build_from_payload(best), final) == pytest.approx(losses[best_step], rel=1e-4)
    assert best_step == 0 < final["step"]  # the diverging run: its best is not its last state
    assert any(not torch.equal(best["state_dict"][k], v) for k, v in final["state_dict"].items())


def test_freeze_transforms_trains_only_the_probability_model(data_dir: Path, straight_run: Path, tmp_path: Path):
    out = tmp_path / "checkerboard.pt"
    extra = ["--init", str(straight_run), "--freeze-transforms", "--steps", "4"]
    assert cli_main(train_args(data_dir, out, *extra, model="checkerboard")) == 0
    source, trained = load(straight_run)["state_dict"], load(out)
    assert trained["model"]["model"] == "checkerboard"
    shared = [k for k in trained["state_dict"] if k.startswith(("g_a.", "g_s.")) or k in ("gains", "inverse_gains")]
    assert {"gains", "inverse_gains"} <= set(shared) and any(k.startswith("g_s.") for k in shared)
    for key in shared:
        assert torch.equal(trained["state_dict"][key], source[key]), key
    # The probability model did train: the estimated rate moved.
    assert trained["history"][0]["val"][0]["bpp"] != trained["history"][-1]["val"][0]["bpp"]


def test_train_synthesis_only_changes_reconstructions_but_not_one_bit_of_the_bitstream(
    data_dir: Path, straight_run: Path, tmp_path: Path
):
    out = tmp_path / "synthesis.pt"
    extra = ["--init", str(straight_run), "--init-whole", "--train-synthesis-only", "--lr", "1e-3", "--steps", "4"]
    assert cli_main(train_args(data_dir, out, *extra)) == 0
    source, tuned = load(straight_run), load(out)
    assert tuned["training"]["settings"]["train_synthesis_only"] is True
    changed = {k for k, v in source["state_dict"].items() if not torch.equal(tuned["state_dict"][k], v)}
    assert changed and all(k.startswith("g_s.") or k == "inverse_gains" for k in changed), changed
    assert any(k.startswith("g_s.") for k in changed)
    # Every encoder-side tensor is the source's, so the same image codes to the same bytes...
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    models = [build_from_payload(payload).eval() for payload in (source, tuned)]
    for model in models:
        model.update(force=True)
    with torch.no_grad():
        coded = [model.compress(image, 1) for model in models]
        assert coded[0]["strings"] == coded[1]["strings"]
        # ...which the tuned decoder reconstructs differently.
        decoded = [model.decompress(stream["strings"], stream["shape"], 1)["x_hat"] for model, stream in zip(models, coded)]
    assert not torch.equal(decoded[0], decoded[1])


def test_learning_rate_warms_up_linearly_then_decays_in_steps():
    settings = TrainSettings(model="msp", data="d", lambdas=[0.01], crop=64, lr=1e-3, steps=100, warmup_steps=10)
    rates = [learning_rate(step, settings) for step in range(100)]
    assert rates[:10] == pytest.approx([1e-4 * (step + 1) for step in range(10)])
    assert rates[10:80] == pytest.approx([1e-3] * 70)
    assert rates[80:95] == pytest.approx([1e-4] * 15) and rates[95:] == pytest.approx([1e-5] * 5)
    no_warmup = dataclasses.replace(settings, warmup_steps=0)
    assert learning_rate(0, no_warmup) == 1e-3 and learning_rate(80, no_warmup) == pytest.approx(1e-4)


def test_warmup_is_recorded_and_applied_by_a_fine_tune(data_dir: Path, straight_run: Path, tmp_path: Path):
    out = tmp_path / "warm.pt"
    extra = ["--init", str(straight_run), "--init-whole", "--lr", "1e-3", "--warmup-steps", "4", "--steps", "20", "--stop-at", "2"]
    assert cli_main(train_args(data_dir, out, *extra)) == 0
    tuned = load(out)
    assert tuned["training"]["settings"]["warmup_steps"] == 4 and tuned["scheduler"]["warmup_steps"] == 4
    assert "warm-up over the first 4 steps" in tuned["training"]["schedule"]
    # The optimizer's last step (step 1, long before the decay at step 16) ran at the ramp's
    # second value, lr * 2/4.
    assert tuned["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)


def test_init_whole_continues_the_trained_model_with_new_settings(data_dir: Path, straight_run: Path, tmp_path: Path):
    out = tmp_path / "finetune.pt"
    extra = ["--init", str(straight_run), "--init-whole", "--lr", "1e-4", "--steps", "4"]
    assert cli_main(train_args(data_dir, out, *extra)) == 0
    source, tuned = load(straight_run), load(out)
    assert tuned["training"]["settings"]["init_whole"] is True
    # Step 0 is the copied model: the same held-out validation as the source's last one.
    for copied, trained in zip(tuned["history"][0]["val"], source["history"][-1]["val"], strict=True):
        assert copied == pytest.approx(trained, rel=1e-5)
    # Transforms and probability model both trained from there.
    changed = {k for k, v in source["state_dict"].items() if not torch.equal(tuned["state_dict"][k], v)}
    assert any(k.startswith("g_s.") for k in changed) and any(k.startswith("latent_codec.hyper.") for k in changed)


def carry(data_dir: Path, straight_run: Path, moved_run: Path, out: Path, steps: int) -> tuple[dict, dict, dict]:
    """straight_run's probability model onto moved_run's frozen transforms, ``steps`` steps: the
    (source, target, result) payloads."""
    extra = ["--init", str(moved_run), "--init-probability", str(straight_run), "--freeze-transforms", "--steps", str(steps)]
    assert cli_main(train_args(data_dir, out, *extra)) == 0
    return load(straight_run), load(moved_run), load(out)


def test_init_probability_carries_a_trained_probability_model_onto_other_transforms(
    data_dir: Path, straight_run: Path, moved_run: Path, tmp_path: Path
):
    source, target, result = carry(data_dir, straight_run, moved_run, tmp_path / "carried.pt", 2)
    assert result["training"]["settings"]["init_probability"] == str(straight_run.resolve())
    # ...and by content, which a record read on another machine can check.
    assert result["training"]["init_sha256"] == {
        "init": hashlib.sha256(moved_run.read_bytes()).hexdigest(),
        "init_probability": hashlib.sha256(straight_run.read_bytes()).hexdigest(),
    }
    transforms = transform_keys(build_from_payload(source))
    assert any(not torch.equal(target["state_dict"][k], source["state_dict"][k]) for k in transforms)
    for key in transforms:  # frozen: still --init's
        assert torch.equal(result["state_dict"][key], target["state_dict"][key]), key
    # Step 0 validated exactly the assembly of --init's transforms and straight_run's probability model.
    assembled = dict(target["state_dict"])
    assembled.update({k: v for k, v in source["state_dict"].items() if k not in transforms})
    model = build_from_payload({**target, "state_dict": assembled})
    assert held_out_loss(result["history"][0]) == pytest.approx(revalidated_loss(model, result), rel=1e-4)
    assert held_out_loss(result["history"][0]) != pytest.approx(held_out_loss(target["history"][-1]), rel=1e-4)
    # ...and the probability model trained from there.
    assert any(not torch.equal(result["state_dict"][k], v) for k, v in source["state_dict"].items() if k not in transforms)


def test_a_resumed_run_keeps_the_digests_of_the_files_it_started_from(
    data_dir: Path, straight_run: Path, moved_run: Path, tmp_path: Path
):
    init = tmp_path / "init.pt"
    shutil.copyfile(moved_run, init)
    out = tmp_path / "carried.pt"
    extra = ["--init", str(init), "--init-probability", str(straight_run), "--freeze-transforms", "--steps", "2", "--stop-at", "1"]
    assert cli_main(train_args(data_dir, out, *extra)) == 0
    started_from = load(out)["training"]["init_sha256"]
    assert started_from["init"] == hashlib.sha256(moved_run.read_bytes()).hexdigest()
    init.unlink()  # a resumed run needs its checkpoint only
    assert cli_main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    resumed = load(out)
    assert resumed["step"] == 2 and resumed["training"]["init_sha256"] == started_from


def test_zero_steps_assembles_validates_and_saves_the_init_parts(
    data_dir: Path, straight_run: Path, moved_run: Path, tmp_path: Path
):
    source, target, result = carry(data_dir, straight_run, moved_run, tmp_path / "assembled.pt", 0)
    assert result["step"] == 0 and len(result["history"]) == 1
    transforms = transform_keys(build_from_payload(source))
    for key, value in result["state_dict"].items():
        expected = target if key in transforms else source
        assert torch.equal(value, expected["state_dict"][key]), key
    assert held_out_loss(result["history"][0]) == pytest.approx(revalidated_loss(build_from_payload(result), result), rel=1e-4)


def test_exported_model_files_serve_as_init_and_init_probability(data_dir: Path, straight_run: Path, tmp_path: Path):
    """Shipped zoo files (coding tables filled in, float16 weights) are sources for a new run: the
    probability model and transforms come over as shipped, the coding tables are left to export."""
    from licbench.training.checkpoint import export_checkpoint

    exported = tmp_path / "shipped.pt"
    export_checkpoint(straight_run, exported, check_images=0)
    out = tmp_path / "from-shipped.pt"
    extra = ["--init", str(exported), "--init-probability", str(exported), "--freeze-transforms", "--steps", "2"]
    assert cli_main(train_args(data_dir, out, *extra)) == 0
    shipped, result = load(exported)["state_dict"], load(out)
    assert any(k.endswith("_quantized_cdf") and v.numel() > 0 for k, v in shipped.items())
    transforms = transform_keys(build_from_payload(result))
    for key in transforms:  # frozen at the shipped (float16) values
        assert torch.equal(result["state_dict"][key], shipped[key].float()), key
    # Step 0 validated the shipped model itself: its coding tables are not used in training.
    assert held_out_loss(result["history"][0]) == pytest.approx(revalidated_loss(load_model(exported), result), rel=1e-4)


def test_export_keeps_coding_tables_exact_and_decodes(straight_run: Path, tmp_path: Path):
    from licbench.training.checkpoint import export_checkpoint

    out = tmp_path / "model.pt"
    info = export_checkpoint(straight_run, out)
    assert info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert info["bytes"] == out.stat().st_size and info["fp16_tensors"] > 0
    shipped = load(out)
    assert shipped["format"] == MODEL_FORMAT and shipped["model"] == load(straight_run)["model"]
    assert shipped["state_dict"]["g_a.layers.0.weight"].dtype == torch.float16

    reference = build_from_payload(load(straight_run))
    reference.update(force=True)
    entropy_models = tuple(f"{n}." for n, m in reference.named_modules() if isinstance(m, EntropyModel))
    tables = {k: v for k, v in reference.state_dict().items() if k.startswith(entropy_models)}
    assert any(k.endswith(".quantiles") for k in tables) and any(k.endswith(".scale_table") for k in tables)
    assert any(k.endswith("_quantized_cdf") and v.numel() > 0 for k, v in tables.items())
    for key, value in tables.items():
        assert shipped["state_dict"][key].dtype == value.dtype, key
        assert torch.equal(shipped["state_dict"][key], value), key
    # fp16 weights cost almost nothing on the held-out image...
    assert info["check"]["images"] and info["check"]["max_abs_delta_bpp"] < 0.01
    assert info["check"]["max_abs_delta_psnr"] < 0.05
    # ...and the shipped file codes for real: the decoder recovers the encoder's latent.
    model = load_model(out)
    x = torch.rand(1, 3, 64, 64)
    compressed = model.compress(x, 1)
    decoded = model.decompress(compressed["strings"], compressed["shape"], 1)
    assert sum(len(s[0]) for s in compressed["strings"]) > 0
    assert torch.equal(decoded["y_hat"], compressed["y_hat"])


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty data", "no .png or .jpg images"),
        ("exists", "exists: pass --resume"),
        ("changed lambdas", "settings differ from the checkpoint's: lambdas"),
        ("bad crop", "not a multiple of the model's stride 32"),
        ("corrupt checkpoint", "not a loadable checkpoint"),
        ("freeze without init", "--freeze-transforms needs --init"),
        ("init whole without init", "--init-whole needs --init"),
        ("init whole from another model", "not the same model"),
        ("probability from another model", "not the same probability model"),
        ("init whole and probability", "choose one"),
        ("synthesis only without init", "--train-synthesis-only needs --init"),
        ("synthesis only without a probability model", "take a trained one with --init-whole"),
        ("synthesis only and frozen transforms", "freeze different parts"),
        ("probability without init", "--init-probability needs --init"),
        ("zoo without export", "it needs --export CKPT"),
        ("zoo name with a path", "a zoo name is letters"),
        ("negative warm-up", "--warmup-steps must be >= 0"),
        ("zero time limit", "--time-limit must be > 0 minutes"),
    ],
)
def test_bad_input_gives_a_one_line_error(case, message, data_dir, straight_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    new_out = tmp_path / "new.pt"
    args = {
        "empty data": train_args(empty, new_out),
        "exists": train_args(data_dir, straight_run),
        "changed lambdas": ["train", "--out", str(straight_run), "--resume", "--lambdas", "0.01,0.05"],
        "bad crop": train_args(data_dir, new_out, "--crop", "48"),
        "corrupt checkpoint": ["train", "--export", str(garbage), "--out", str(new_out)],
        "freeze without init": train_args(data_dir, new_out, "--freeze-transforms"),
        "init whole without init": train_args(data_dir, new_out, "--init-whole"),
        "init whole from another model": train_args(
            data_dir, new_out, "--init", str(straight_run), "--init-whole", model="checkerboard"
        ),
        "probability from another model": train_args(
            data_dir, new_out, "--init", str(straight_run), "--init-probability", str(straight_run), model="checkerboard"
        ),
        "init whole and probability": train_args(
            data_dir, new_out, "--init", str(straight_run), "--init-whole", "--init-probability", str(straight_run)
        ),
        "synthesis only without init": train_args(data_dir, new_out, "--train-synthesis-only"),
        "synthesis only without a probability model": train_args(
            data_dir, new_out, "--init", str(straight_run), "--train-synthesis-only"
        ),
        "synthesis only and frozen transforms": train_args(
            data_dir, new_out, "--init", str(straight_run), "--init-whole", "--train-synthesis-only", "--freeze-transforms"
        ),
        "probability without init": train_args(data_dir, new_out, "--init-probability", str(straight_run)),
        "zoo without export": train_args(data_dir, new_out, "--zoo", "tiny"),
        "zoo name with a path": ["train", "--export", str(straight_run), "--zoo", "../tiny"],
        "negative warm-up": train_args(data_dir, new_out, "--warmup-steps", "-1"),
        "zero time limit": train_args(data_dir, new_out, "--time-limit", "0"),
    }[case]
    assert cli_main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("licbench: error:") and message in error
    assert not new_out.exists()


def test_float32_export_ships_the_weights_as_trained(straight_run: Path, tmp_path: Path):
    from licbench.training.checkpoint import export_checkpoint

    out = tmp_path / "model32.pt"
    info = export_checkpoint(straight_run, out, precision="float32")
    assert info["fp16_tensors"] == 0
    trained = load(straight_run)["state_dict"]
    shipped = load(out)["state_dict"]
    assert shipped["g_a.layers.0.weight"].dtype == torch.float32
    assert torch.equal(shipped["g_a.layers.0.weight"], trained["g_a.layers.0.weight"])
    # No rounding, so the shipped file measures exactly what the training checkpoint does.
    assert info["check"]["images"] and info["check"]["shipped"] == info["check"]["float32"]
    with pytest.raises(ValueError, match="export precision"):
        export_checkpoint(straight_run, tmp_path / "bad.pt", check_images=0, precision="bfloat16")


def test_record_in_zoo_pins_the_file_and_keeps_the_training_record(straight_run: Path, tmp_path: Path):
    from licbench.models.zoo import record_in_zoo
    from licbench.training.checkpoint import export_checkpoint

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    index = zoo / "zoo.json"
    out = zoo / "tiny.pt"
    exported = export_checkpoint(straight_run, out, check_images=0)
    entry = record_in_zoo("tiny", exported, load(out), "test model", index=index)
    stored = json.loads(index.read_text())["checkpoints"]["tiny"]
    assert stored == entry
    assert entry["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert entry["model"] == "hyperprior" and entry["status"] == "test model"
    assert entry["training"]["steps"] == load(straight_run)["step"]
    assert entry["training"]["sessions"][0]["device"] == "cpu"
    assert entry["training"]["held_out_validation"] == load(straight_run)["history"][-1]["val"]
    assert entry["training"]["held_out_validation_step"] == load(straight_run)["history"][-1]["step"]
    # Where the weights came from is part of the record (none here: trained from scratch).
    settings = entry["training"]["settings"]
    assert settings["init"] is None and settings["init_probability"] is None and settings["init_whole"] is False
    assert entry["training"]["init_sha256"] == {}
    assert settings["model_options"] == load(straight_run)["training"]["settings"]["model_options"] != {}
    # A second entry keeps the first; a file outside the zoo folder is refused.
    record_in_zoo("tiny-again", exported, load(out), "", index=index)
    assert set(json.loads(index.read_text())["checkpoints"]) == {"tiny", "tiny-again"}
    with pytest.raises(ValueError, match="must be in the zoo folder"):
        record_in_zoo("elsewhere", {**exported, "path": str(straight_run)}, load(out), "", index=index)


def test_an_exported_file_ships_as_it_is_with_its_own_training_record(straight_run: Path, tmp_path: Path):
    """A committed candidate (an exported model file) goes into the zoo byte for byte: the zoo's
    sha256 is the candidate's, and its record is the training that made it, not a re-export's."""
    from licbench.models.zoo import record_in_zoo
    from licbench.training.checkpoint import export_checkpoint, save_atomic

    candidate = tmp_path / "candidate.pt"
    export_checkpoint(straight_run, candidate, check_images=0)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shipped = zoo / "tiny.pt"
    info = export_checkpoint(candidate, shipped, check_images=1, precision="float32")
    assert shipped.read_bytes() == candidate.read_bytes()
    assert info["sha256"] == hashlib.sha256(candidate.read_bytes()).hexdigest()
    assert info["step"] == load(straight_run)["step"] and info["check"] == {"images": [], "copied_from": str(candidate)}
    assert info["fp16_tensors"] > 0 and info["exact_tensors"] > 0  # its float16 export stands
    entry = record_in_zoo("tiny", info, load(shipped), "", index=zoo / "zoo.json")
    assert entry["training"]["steps"] == load(straight_run)["step"]
    assert entry["training"]["held_out_validation"] == load(straight_run)["history"][-1]["val"]

    # A model file whose weights do not fit its model is refused before anything is written.
    broken = load(candidate)
    broken["state_dict"].pop(next(iter(broken["state_dict"])))
    save_atomic(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="broken.pt: its weights do not fit its model"):
        export_checkpoint(tmp_path / "broken.pt", zoo / "broken.pt")
    assert not (zoo / "broken.pt").exists()
