"""Never lose a run, never show a traceback: corrupt checkpoints, workdirs in use, changed flags on
resume, interrupted saves, Ctrl-C, --help. Each case as the user meets it, through the CLI."""

import json
import os
import re
import shutil
import signal
import time

import pytest
import tensorflow as tf

from alexnet_tf import training
from helpers import cli, tiny_config


def one_error_line(proc, tool="alexnet-train"):
    """The single line a failing tool prints; fails the test on a traceback or more lines."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), \
        proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_folder):
    """A tiny run with checkpoints at steps 2, 4 and 6."""
    root = tmp_path_factory.mktemp("trained")
    training.train(tiny_config(root / "run", shapes_folder, root / "data", steps=6, ckpt_every=2, eval_every=6,
                               val_fraction=0.05),
                   log=lambda *_: None)
    return root


@pytest.fixture
def workdir(trained, tmp_path):
    """A copy of the trained run to damage."""
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run"


def train_args(workdir, shapes_folder, data_dir, steps, *extra):
    return [f"--dataset=folder:{shapes_folder}", f"--data_dir={data_dir}", f"--workdir={workdir}", "--preset=tiny",
            "--batch_size=8", f"--steps={steps}", "--eval_every=2", "--log_every=1", "--export_dir=", *extra]


def corrupt(ckpt, how):
    data, index = ckpt.with_name(ckpt.name + ".data-00000-of-00001"), ckpt.with_name(ckpt.name + ".index")
    if how == "truncated_data":
        data.write_bytes(data.read_bytes()[:100])
    elif how == "empty_data":
        data.write_bytes(b"")
    elif how == "deleted_index":
        index.unlink()
    elif how == "garbage_index":
        index.write_bytes(os.urandom(200))
    elif how == "missing_data":
        data.unlink()


CORRUPTIONS = ["truncated_data", "empty_data", "deleted_index", "garbage_index", "missing_data"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupt_latest_checkpoint_is_skipped_by_export_and_by_resume(workdir, trained, shapes_folder, tmp_path,
                                                                       how):
    corrupt(workdir / "checkpoints" / "ckpt-6", how)
    exported = cli("export", f"--workdir={workdir}", f"--export_dir={tmp_path}/export")
    assert exported.returncode == 0, exported.stderr
    assert re.search(r"skipped checkpoint .*ckpt-6: (missing|unreadable)", exported.stdout), exported.stdout
    assert (tmp_path / "export" / "1" / "saved_model.pb").exists()

    proc = cli("train", *train_args(workdir, shapes_folder, trained / "data", 8))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert re.search(r"skipped checkpoint .*ckpt-6: (missing|unreadable)", out) and \
        re.search(r"resumed from .*ckpt-4 at step 4", out), out
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-8")
    assert list((workdir / "checkpoints").glob("ckpt-6*.corrupt")) or how == "deleted_index" and \
        list((workdir / "checkpoints").glob("ckpt-6.data*.corrupt"))  # kept for a look, never picked again


def test_when_no_checkpoint_restores_training_refuses_and_keeps_the_files(workdir, trained, shapes_folder):
    for n in (2, 4, 6):
        corrupt(workdir / "checkpoints" / f"ckpt-{n}", "truncated_data")
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    proc = cli("train", *train_args(workdir, shapes_folder, trained / "data", 8))
    assert proc.returncode != 0
    line = one_error_line(proc)
    assert "no checkpoint in" in line and "ckpt-6, ckpt-4, ckpt-2" in line and "refusing to start over" in line
    assert not list((workdir / "checkpoints").glob("ckpt-8*"))
    assert sorted(p.name.removesuffix(".corrupt") for p in (workdir / "checkpoints").iterdir()) == before


def test_a_garbage_state_file_does_not_restart_the_run(workdir, trained, shapes_folder):
    (workdir / "checkpoints" / "checkpoint").write_text("this is not a checkpoint state {{{")
    proc = cli("train", *train_args(workdir, shapes_folder, trained / "data", 7))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"resumed from .*ckpt-6 at step 6", proc.stdout + proc.stderr)
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-7")


def test_a_killed_saves_temp_folder_is_removed_at_start_up(workdir, trained, shapes_folder):
    temp = workdir / "checkpoints" / "ckpt-7_temp"
    temp.mkdir()
    (temp / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 1000)
    proc = cli("train", *train_args(workdir, shapes_folder, trained / "data", 6))
    assert proc.returncode == 0, proc.stderr
    assert not temp.exists() and f"removed {temp}" in proc.stdout


@pytest.mark.parametrize("flag, shown", [
    ("--batch_size=4", "--batch_size=4 (recorded: 8)"),
    ("--lr_schedule=step", "--lr_schedule=step (recorded: plateau)"),
    ("--preset=paper", "--preset=paper (recorded: tiny)"),
    ("--train_layers=fc8", "--train_layers=fc8 (recorded: all)"),
])
def test_resuming_with_changed_settings_is_refused_naming_each_flag(workdir, trained, shapes_folder, flag, shown):
    recorded = (workdir / "config.json").read_text()
    args = [a for a in train_args(workdir, shapes_folder, trained / "data", 8) if not a.startswith(flag.split("=")[0])]
    proc = cli("train", *args, flag)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "cannot resume with changed settings" in line and shown in line, line
    assert (workdir / "config.json").read_text() == recorded  # nothing was overwritten


def test_resuming_on_another_dataset_is_refused(workdir, trained, tmp_path, shapes_folder):
    other = tmp_path / "other"
    shutil.copytree(shapes_folder, other)
    proc = cli("train", *train_args(workdir, other, trained / "data", 8))
    assert proc.returncode == 2 and f"--dataset=folder:{other} (recorded: folder:{shapes_folder})" in \
        one_error_line(proc)


def test_a_second_trainer_on_the_same_workdir_stops_at_once(workdir, trained, shapes_folder):
    first = cli("train", *train_args(workdir, shapes_folder, trained / "data", 100000), wait=False)
    try:
        lock = workdir / ".lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)) and time.time() < deadline:
            time.sleep(0.2)
        second = cli("train", *train_args(workdir, shapes_folder, trained / "data", 100000), timeout=120)
        assert second.returncode != 0
        assert f"in use by process {first.pid}" in one_error_line(second)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143  # the first one was not disturbed; it checkpointed on SIGTERM


@pytest.mark.heavy
def test_ctrl_c_checkpoints_and_exits_130_without_a_traceback(workdir, trained, shapes_folder):
    proc = cli("train", *train_args(workdir, shapes_folder, trained / "data", 100000, "--eval_every=1000"),
               wait=False)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + 240
    while tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-6") and time.time() < deadline:
        time.sleep(0.2)  # wait until it trains past the copied checkpoints
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    m = re.search(r"SIGINT: checkpoint written at step (\d+)", out)
    assert m and tf.train.latest_checkpoint(str(ckpts)).endswith(f"ckpt-{m.group(1)}"), out


@pytest.mark.parametrize("tool, flags_shown", [
    ("train", ["--init_from", "--train_layers", "--lr"]),
    ("export", ["--workdir", "--tflite"]),
    ("predict", ["--model", "--gallery"]),
    ("import_weights", ["--weights", "--workdir"]),
    ("benchmark", ["--sections", "--repeats"]),
])
def test_help_lists_each_tools_flags_and_exits_0(tool, flags_shown):
    proc = cli(tool, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert all(f in proc.stdout for f in flags_shown), proc.stdout


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, shapes_folder):
    (tmp_path / "afile").write_text("x")
    proc = cli("train", *train_args(tmp_path / "afile", shapes_folder, tmp_path / "data", 1))
    assert proc.returncode == 2 and "--workdir=" in one_error_line(proc) and "is a file" in proc.stderr


def test_export_of_a_truncated_config_is_one_line(workdir, tmp_path):
    (workdir / "config.json").write_text((workdir / "config.json").read_text()[:50])
    proc = cli("export", f"--workdir={workdir}", f"--export_dir={tmp_path}/export")
    assert proc.returncode == 1
    assert "config.json is not valid JSON" in one_error_line(proc, "alexnet-export")
