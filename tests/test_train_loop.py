"""The training loop end to end on the tiny preset: resume, bad losses, the CLI, kills and TensorBoard."""

import dataclasses
import json
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import config as cfg, train_state, training, workdir
from helpers import cli as run_cli, tiny_config


def test_train_writes_its_run_and_resumes(tmp_path, shapes_folder):
    logs = []
    config = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data")
    result, _ = training.train(config, log=logs.append)
    assert result["step"] == 4 and 0 <= result["validation_accuracy"] <= 1
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["batch_size"] == 8 and saved["model"]["preset"] == "tiny" and saved["total_steps"] == 4
    assert len(saved["statistics"]["mean"]) == 3
    assert json.loads((run / "classes.json").read_text())[0] == "checkerboard"
    assert json.loads((run / "result.json").read_text())["step"] == 4
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-4")

    # The same command with more steps continues from step 4.
    config.steps = 6
    logs.clear()
    result, _ = training.train(config, log=logs.append)
    assert result["step"] == 6
    assert any(re.search(r"resumed from .*ckpt-4 at step 4", line) for line in logs), logs


def test_non_finite_loss_stops_naming_the_step(tmp_path, shapes_folder):
    config = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data", lr=1e9, steps=50, ckpt_every=1,
                         eval_every=100)
    with pytest.raises(training.NonFiniteLoss, match=r"the loss became (nan|inf) at step (\d+)") as e:
        training.train(config, log=lambda *_: None)
    bad_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    if bad_step > 1:
        # Every step before the bad one was saved; the bad one never was, and the last save still restores.
        assert latest.endswith(f"ckpt-{bad_step - 1}")
        reader = tf.train.load_checkpoint(latest)
        assert all(np.isfinite(reader.get_tensor(name)).all() for name, _ in
                   tf.train.list_variables(latest) if "kernel" in name)
    else:
        assert latest is None


def cli(*args):
    return run_cli("train", *args, wait=False)


@pytest.mark.parametrize("flag, shown", [
    ("--batch_size=0", "--batch_size"),
    ("--lr_schedule=cosine", "--lr_schedule"),
    ("--tower_devices=/CPU:0", "--tower_devices"),
    ("--dataset=folder:/nonexistent/place", "/nonexistent/place"),
    ("--lr=0", "--lr=0.0: must be a finite number > 0"),
    ("--lr=inf", "--lr=inf: must be a finite number > 0"),
    # The bound is TrainConfig.check's (< 1); the flag once said <= 0.999 and let 0.9995 through to a
    # different rule.
    ("--momentum=1", "--momentum=1.0: must be in [0, 1)"),
])
def test_cli_bad_value_is_one_line_naming_it(tmp_path, flag, shown):
    proc = run_cli("train", flag, f"--workdir={tmp_path}/w", f"--data_dir={tmp_path}/d")
    err = proc.stderr
    assert proc.returncode != 0
    lines = [l for l in err.splitlines() if l.strip() and not re.match(r"^[IWE]\d{4} |^WARNING: All log", l)]
    assert len(lines) == 1 and shown in lines[0], err


def checkpoint_steps(directory):
    state = tf.train.get_checkpoint_state(str(directory))
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


def newest_complete_checkpoint(directory):
    """The step of the newest checkpoint whose index and data files are both on disk: where a rerun resumes."""
    for prefix in workdir.checkpoints_on_disk(directory):
        if Path(f"{prefix}.index").exists() and list(Path(prefix).parent.glob(f"{Path(prefix).name}.data-*")):
            return int(prefix.rsplit("-", 1)[1])
    raise AssertionError(f"no complete checkpoint in {directory}")


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run_args(tmp_path, shapes_folder, steps):
    return [f"--dataset=folder:{shapes_folder}", f"--data_dir={tmp_path}/data", f"--workdir={tmp_path}/run",
            "--preset=tiny", "--batch_size=8", f"--steps={steps}", "--ckpt_every=3", "--eval_every=1000",
            f"--export_dir={tmp_path}/export"]


@pytest.mark.heavy
def test_sigkill_mid_run_then_rerun_continues_from_the_last_checkpoint(tmp_path, shapes_folder):
    ckpts = tmp_path / "run" / "checkpoints"
    proc = cli(*run_args(tmp_path, shapes_folder, 100000))
    try:
        wait_for(lambda: max(checkpoint_steps(ckpts), default=0) >= 9, 240, "three checkpoints")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    saved = newest_complete_checkpoint(ckpts)
    # The state file names it, or the one before: SIGKILL can land between a save's files and the state
    # file's update, and the trainer resumes from the files (measured: a full-suite run killed it there).
    assert max(checkpoint_steps(ckpts)) in (saved, saved - 3)
    latest = str(ckpts / f"ckpt-{saved}")
    reader = tf.train.load_checkpoint(latest)

    # Rebuild exactly what the trainer builds and restore: every object matches,
    # and writing the restored state back gives the checkpoint's values exactly
    # (a variable that failed to restore would come back freshly initialized).
    config = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data")
    state = train_state.build_state(config, dataclasses.replace(config.model, num_classes=10), tf.distribute.get_strategy())
    state.checkpoint.restore(latest).assert_existing_objects_matched()
    assert int(state.step.numpy()) == saved
    momentum = [v for v in state.optimizer.variables if "momentum" in v.path]
    assert len(momentum) == 30 and any(np.abs(v.numpy()).max() > 0 for v in momentum)
    again = state.checkpoint.write(str(tmp_path / "rewritten" / "ckpt"))
    rewritten = tf.train.load_checkpoint(again)
    values = [n for n, _ in tf.train.list_variables(latest) if n.endswith("VARIABLE_VALUE")]
    assert len(values) > 60  # 30 weights, 30 momentum slots, step, schedule, ...
    for name in values:
        np.testing.assert_array_equal(rewritten.get_tensor(name), reader.get_tensor(name), err_msg=name)

    # Rerunning the same command resumes at the saved step.
    proc = run_cli("train", *run_args(tmp_path, shapes_folder, saved + 2))
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err
    assert f"at step {saved}" in out + err
    assert max(checkpoint_steps(ckpts)) == saved + 2
    # The finished run prints its accuracy, workdir and the SavedModel it exported.
    assert "validation accuracy:" in out and f"workdir: {tmp_path}/run" in out
    assert f"SavedModel: {tmp_path}/export/1" in out and (tmp_path / "export" / "1" / "saved_model.pb").exists()


@pytest.mark.heavy
def test_sigterm_writes_a_final_checkpoint(tmp_path, shapes_folder):
    ckpts = tmp_path / "run" / "checkpoints"
    proc = cli(*run_args(tmp_path, shapes_folder, 100000))
    wait_for(lambda: checkpoint_steps(ckpts), 240, "a first checkpoint")
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    m = re.search(r"stopped by SIGTERM at step (\d+): checkpoint written", err)
    assert m, out + err
    assert max(checkpoint_steps(ckpts)) == int(m.group(1))
    assert tf.train.latest_checkpoint(str(ckpts)).endswith(f"ckpt-{m.group(1)}")


def read_events(logdir):
    """{tag: [(step, tensor as NumPy)]} from the TensorBoard event files under `logdir`, as TensorBoard reads them."""
    found = {}
    for path in sorted(tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return found


def test_tensorboard_gets_the_scalars_histograms_and_the_kernel_image(tmp_path, shapes_folder):
    config = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data", steps=2, eval_every=2)
    training.train(config, log=lambda *_: None)
    train, validation = read_events(tmp_path / "run" / "train"), read_events(tmp_path / "run" / "validation")
    assert {"loss", "top1_error", "top5_error", "learning_rate", "images_per_second", "gradient_norm",
            "weight_norm"} <= set(train)
    assert [step for step, _ in train["loss"]] == [1, 2]  # log_every=1
    assert all(np.isfinite(v) and v > 0 for _, v in train["loss"])
    assert {"loss", "top1_error", "top5_error"} <= set(validation)
    # The conv1 kernels as one PNG (tf.summary.image stores width, height, then the encoded images).
    (_, image), = train["conv1_kernels"]
    assert image[2][:8] == b"\x89PNG\r\n\x1a\n"
    # Every weight of the kernel is counted once, in buckets that tile its range.
    (_, buckets), = train["weights/conv1_a/kernel"]
    assert buckets.shape == (30, 3)
    assert buckets[:, 2].sum() == 11 * 11 * 3 * round(48 * cfg.PRESETS["tiny"]["width"])
    np.testing.assert_allclose(buckets[1:, 0], buckets[:-1, 1])
    assert any(tag.startswith("weights/fc8") for tag in train)


def test_warmup_ramps_the_learning_rate_then_hands_over(tmp_path, shapes_folder):
    config = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data", lr=0.02, warmup_steps=4, steps=2,
                         eval_every=100)
    _, run = training.train(config, log=lambda *_: None)
    # The rate of the last step taken (step 2 of a 4-step ramp) is 2/4 of --lr.
    assert np.isclose(float(run.state.optimizer.learning_rate.numpy()), 0.02 * 2 / 4)
    config.steps = 7
    _, run = training.train(config, log=lambda *_: None)
    assert np.isclose(float(run.state.optimizer.learning_rate.numpy()), 0.02)


@pytest.mark.parametrize("overrides", [
    dict(mixed_precision="mixed_bfloat16"),
    dict(mixed_precision="mixed_float16"),
    dict(jit=True),
    dict(ten_crop=True),
], ids=["bfloat16", "float16-loss-scaling", "xla", "ten-crop-eval"])
def test_precision_xla_and_ten_crop_options_train_and_evaluate(tmp_path, shapes_folder, overrides):
    config = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data", steps=3, eval_every=3, **overrides)
    result, run = training.train(config, log=lambda *_: None)
    assert result["step"] == 3 and np.isfinite(result["validation_loss"])
    assert 0 <= result["validation_top1_error"] <= 1 and result["validation_top5_error"] <= result["validation_top1_error"]
    variables = run.state.model.trainable_variables
    assert all(v.dtype == "float32" for v in variables)  # master weights stay float32
    if "mixed_precision" in overrides:
        assert run.state.model.get_layer("conv1_a").compute_dtype == overrides["mixed_precision"].split("_")[1]
        assert run.state.model.output.dtype == "float32"
    if overrides.get("mixed_precision") == "mixed_float16":
        assert isinstance(run.state.optimizer, __import__("keras").optimizers.LossScaleOptimizer)


def test_step_schedule_drops_inside_the_loop(tmp_path, shapes_folder):
    config = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data", lr=0.01, lr_schedule="step",
                         step_epochs=1, steps=1, eval_every=100)
    result, run = training.train(config, log=lambda *_: None)
    steps_per_epoch = json.loads((tmp_path / "run" / "config.json").read_text())["steps_per_epoch"]
    assert np.isclose(float(run.state.optimizer.learning_rate.numpy()), 0.01)
    logs = []
    config.steps = steps_per_epoch + 1
    _, run = training.train(config, log=logs.append)
    assert np.isclose(float(run.state.optimizer.learning_rate.numpy()), 0.001)
    assert any(f"step {steps_per_epoch}: learning rate divided by 10" in line for line in logs), logs
