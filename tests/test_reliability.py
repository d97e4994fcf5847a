"""Never lose a run, never show a traceback: corrupt checkpoints, workdirs in use, changed flags on
resume, interrupted saves, Ctrl-C, --help. Each case as the user meets it, through the CLI."""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import tensorflow as tf

from helpers import cli


def one_error_line(proc, tool="alexnet-train"):
    """The single line a failing tool prints; fails the test on a traceback or more lines."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), \
        proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_run, data_dir):
    """The session's tiny run (checkpoints at steps 2, 4 and 6) as <root>/run, beside its data dir as
    <root>/data. Read it; copy it (`workdir`) to damage it."""
    root = tmp_path_factory.mktemp("trained")
    (root / "run").symlink_to(tiny_run, target_is_directory=True)
    (root / "data").symlink_to(data_dir, target_is_directory=True)
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
def test_a_corrupt_latest_checkpoint_is_skipped_when_loading_and_set_aside_when_resuming(workdir, how):
    """Each kind of damage through the functions export and the trainer use; the CLI case below checks the
    messages and the exit codes once."""
    import dataclasses

    from alexnet_tf import checkpoints, runs, train_state

    corrupt(workdir / "checkpoints" / "ckpt-6", how)
    logs = []
    checkpoints.load_model(workdir, log=logs.append)  # what alexnet-export restores
    assert len(logs) == 1 and re.search(r"skipped checkpoint .*ckpt-6: (missing|unreadable)", logs[0]), logs

    record, names = runs.read_run(workdir)
    state = train_state.build_state(record.config, dataclasses.replace(record.model, num_classes=len(names)),
                                 tf.distribute.get_strategy())
    logs.clear()
    restored = checkpoints.restore_newest(state.checkpoint, workdir / "checkpoints", logs.append, set_aside=True)
    assert restored.endswith("ckpt-4") and int(state.step.numpy()) == 4
    assert re.search(r"skipped checkpoint .*ckpt-6: (missing|unreadable)", logs[0]), logs
    # Its files are kept for a look under *.corrupt, and the state file no longer names it.
    assert list((workdir / "checkpoints").glob("ckpt-6*.corrupt"))
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("ckpt-4")


def test_a_corrupt_latest_checkpoint_is_skipped_by_export_and_by_resume(workdir, trained, shapes_folder, tmp_path):
    how = "truncated_data"
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
    first = cli("train", *train_args(workdir, shapes_folder, trained / "data", 100000, "--ckpt_every=1"),
                wait=False)
    try:
        lock, ckpts = workdir / ".lock", workdir / "checkpoints"
        deadline = time.time() + 120
        # Until the first one holds the lock and trains (past the copied ckpt-6), so that the SIGTERM below
        # reaches a trainer, not one still starting up.
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)
                   and not tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-6")) and time.time() < deadline:
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
    # --ckpt_every=1: the wait below ends at the first step trained, not after 1,000 steps (which took
    # 241 s once on a loaded host, against 17-20 s usually).
    proc = cli("train", *train_args(workdir, shapes_folder, trained / "data", 100000, "--eval_every=1000",
                                    "--ckpt_every=1"), wait=False)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + 240
    while tf.train.latest_checkpoint(str(ckpts)).endswith("ckpt-6") and time.time() < deadline:
        time.sleep(0.2)  # wait until it trains past the copied checkpoints
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    m = re.search(r"^alexnet-train: stopped by SIGINT at step (\d+): checkpoint written \(.*\); rerun the same command "
                  r"to resume$", err, re.M)
    assert m and tf.train.latest_checkpoint(str(ckpts)).endswith(f"ckpt-{m.group(1)}"), out


@pytest.mark.parametrize("tool, flags_shown", [
    ("train", ["--init_from", "--train_layers", "--lr"]),
    ("export", ["--workdir", "--tflite"]),
    ("predict", ["--model", "--gallery"]),
    ("import_weights", ["--weights", "--workdir"]),
    ("benchmark", ["--sections", "--repeats"]),
    ("prepare", ["--format", "--output", "--tasks"]),
    ("data_service", ["--dispatcher", "--work_dir", "--dispatcher_address"]),
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


# ----------------------------------------------------------------------------
# Bad paths and inputs: one line, non-zero exit, no traceback
# ----------------------------------------------------------------------------

def test_bad_folders_are_refused_before_training(tmp_path, shapes_folder):
    (tmp_path / "afile").write_text("x")
    for flag, why in (("--data_dir", "is a file"), ("--export_dir", "is a file")):
        args = train_args(tmp_path / "run", shapes_folder, tmp_path / "data", 1)
        proc = cli("train", *[a for a in args if not a.startswith(flag)], f"{flag}={tmp_path}/afile", timeout=120)
        assert proc.returncode == 2 and f"{flag}={tmp_path}/afile: {why}" in one_error_line(proc)
        assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything trained
    proc = cli("train", *train_args(tmp_path / "afile" / "run", shapes_folder, tmp_path / "data", 1), timeout=120)
    assert proc.returncode == 2 and "cannot be created" in one_error_line(proc)


def test_folders_that_cannot_be_written_are_one_line_naming_the_flag(tmp_path, shapes_folder, tiny_run):
    # /proc refuses new folders even to root, whose permission bits a read-only folder would not stop.
    args = train_args(tmp_path / "run", shapes_folder, tmp_path / "data", 1)
    proc = cli("train", *[a for a in args if not a.startswith("--export_dir")], "--export_dir=/proc/xyz")
    assert proc.returncode == 2 and "--export_dir=/proc/xyz: cannot be written (/proc is not writable)" in \
        one_error_line(proc)
    proc = cli("export", f"--workdir={tiny_run}", "--export_dir=/proc/xyz")  # 2 as in alexnet-train (it was 1)
    assert proc.returncode == 2 and "--export_dir=/proc/xyz: cannot be written" in one_error_line(proc, "alexnet-export")
    # A data_dir where the embedded dataset cannot be generated, and one where a folder's statistics cannot be
    # stored: the flag and the folder, not a traceback.
    proc = cli("train", "--data_dir=/proc/xyz", f"--workdir={tmp_path}/embedded", "--steps=1", "--export_dir=")
    assert proc.returncode == 1 and "--data_dir=/proc/xyz: cannot prepare alexnet_shapes there" in one_error_line(proc)
    proc = cli("train", *[a for a in args if not a.startswith("--data_dir")], "--data_dir=/proc/xyz")
    assert proc.returncode == 1 and "--data_dir=/proc/xyz: cannot store the statistics of folder:" in \
        one_error_line(proc)
    assert not (tmp_path / "run").exists() and not (tmp_path / "embedded").exists()


@pytest.mark.parametrize("layout, message", [
    ("one_image_per_class", "no usable validation images"),
    ("one_class", "has one class"),
    ("an_empty_class_folder", "class folder(s) empty_class hold no files"),
])
def test_unusable_folder_datasets_are_one_line(tmp_path, shapes_folder, layout, message):
    folder = tmp_path / "dataset"
    classes = sorted(shapes_folder.iterdir())[:1 if layout == "one_class" else 3]
    for c in classes:
        files = sorted(c.iterdir())[:1 if layout == "one_image_per_class" else 4]
        (folder / c.name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, folder / c.name / f.name)
    if layout == "an_empty_class_folder":
        (folder / "empty_class").mkdir()
    proc = cli("train", *train_args(tmp_path / "run", folder, tmp_path / "data", 1))
    assert proc.returncode == 1 and message in one_error_line(proc)


def test_an_error_after_the_progress_bar_starts_on_a_new_line(tmp_path, shapes_folder):
    proc = cli("train", *train_args(tmp_path / "run", shapes_folder, tmp_path / "data", 50, "--lr=1e9"))
    assert proc.returncode == 1 and "the loss became" in one_error_line(proc)
    assert proc.stdout.endswith("\n")


def test_benchmark_refuses_an_untrained_workdir_and_positional_arguments(tmp_path):
    proc = cli("benchmark", "--sections=inference", f"--workdir={tmp_path}", timeout=60)
    assert proc.returncode == 2 and "no trained run with a checkpoint" in one_error_line(proc, "alexnet-benchmark")
    proc = cli("benchmark", "--sections=matmul", "stray", timeout=60)
    assert proc.returncode == 2 and "unexpected arguments: stray" in one_error_line(proc, "alexnet-benchmark")


def png_header(width, height):
    """A PNG whose header says width x height (grayscale) with a few rows of data: what a decompression bomb
    looks like to a reader that trusts the header."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained):
    """The trained tiny run exported as a SavedModel and a float32 TFLite file."""
    from alexnet_tf import export

    root = tmp_path_factory.mktemp("exported")
    model, _, prep = export.load_trained(trained / "run")
    saved = export.export_savedmodel(model, prep, root / "export")
    tflite = export.write_tflite(export.export_tflite(model, "float32"), root / "export" / "m.tflite", prep)
    return dict(saved=saved, tflite=tflite)


def test_decompression_bombs_are_refused_unread_in_the_scan_and_in_prediction(tmp_path, shapes_folder, exported):
    from alexnet_tf import images

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20000, 20000))
    ok, why = images.check_image(bomb)
    assert not ok and "20000x20000 = 400,000,000 pixels exceeds the limit of 89,478,485" in why
    proc = cli("predict", f"--model={exported['saved']}", bomb, timeout=120)
    assert proc.returncode == 1 and f"{bomb}: 20000x20000 = 400,000,000 pixels" in \
        one_error_line(proc, "alexnet-predict")
    # In a training folder it is skipped by name, like any unusable file; --max_pixels sets the limit.
    folder = tmp_path / "dataset"
    shutil.copytree(shapes_folder, folder)
    shutil.copy(bomb, folder / "checkerboard" / "bomb.png")
    proc = cli("train", *train_args(tmp_path / "run", folder, tmp_path / "data", 1, "--max_pixels=20000"))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"skipped .*bomb\.png: 20000x20000 = 400,000,000 pixels exceeds the limit of 20,000", proc.stdout)
    assert "skipped 1 unusable file(s)" in proc.stdout  # the 96x96 JPEGs (9,216 pixels) are under it


def test_predict_refuses_models_it_cannot_use_in_one_line(tmp_path, exported, shapes_folder):
    image = sorted(sorted(shapes_folder.iterdir())[0].iterdir())[0]
    plain = tmp_path / "plain_savedmodel"
    tf.saved_model.save(tf.Module(), str(plain))
    no_assets = tmp_path / "no_assets"
    shutil.copytree(exported["saved"], no_assets)
    shutil.rmtree(no_assets / "assets")
    truncated = tmp_path / "truncated"
    shutil.copytree(exported["saved"], truncated)
    data_file = next((truncated / "variables").glob("variables.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:1000])
    cut_tflite = tmp_path / "cut.tflite"
    cut_tflite.write_bytes(exported["tflite"].read_bytes()[:5000])
    shutil.copy(str(exported["tflite"]) + ".json", str(cut_tflite) + ".json")
    bad_sidecar = tmp_path / "bad.tflite"
    shutil.copy(exported["tflite"], bad_sidecar)
    (tmp_path / "bad.tflite.json").write_text("{not json")
    for model, message in ((plain, "missing assets/alexnet_tf.json"), (no_assets, "missing assets/alexnet_tf.json"),
                           (truncated, "the SavedModel cannot be loaded"), (cut_tflite, "not a readable TFLite model"),
                           (bad_sidecar, "bad.tflite.json is not valid JSON")):
        proc = cli("predict", f"--model={model}", image, timeout=120)
        assert proc.returncode == 2, (model, proc.stderr)
        assert message in one_error_line(proc, "alexnet-predict"), (model, proc.stderr)


def test_predict_galleries_outputs_and_empty_folders(tmp_path, exported, shapes_folder):
    image = sorted(sorted(shapes_folder.iterdir())[0].iterdir())[0]
    (tmp_path / "empty").mkdir()
    for gallery, message in ((tmp_path / "empty", "no usable images found"), (tmp_path / "nowhere", "no such folder")):
        proc = cli("predict", f"--model={exported['saved']}", "--neighbors=2", f"--gallery={gallery}", image)
        assert proc.returncode == 2 and f"--gallery={gallery}: {message}" in one_error_line(proc, "alexnet-predict")
    proc = cli("predict", f"--model={exported['saved']}", f"--features={tmp_path}/new/dir/f.npy", image)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "new" / "dir" / "f.npy").exists()
    proc = cli("predict", f"--model={exported['saved']}", tmp_path / "empty")
    assert proc.returncode == 1 and f"no images found under {tmp_path}/empty" in one_error_line(proc, "alexnet-predict")


# ----------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root, as CI has); skipped where it cannot be mounted."""
    import subprocess

    mount = tmp_path / "small_disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_while_preparing_is_one_line_and_a_rerun_resumes(small_disk, shapes_folder, data_dir):
    """Issue 32: a full disk while preparing was a 27-line traceback (a rerun after freeing space resumed)."""
    args = (f"--dataset=folder:{shapes_folder}", f"--data_dir={data_dir}", f"--output={small_disk}/p",
            "--format=raw256", "--shard_size=2")
    proc = cli("prepare", *args)
    assert proc.returncode == 1, proc.stderr
    assert one_error_line(proc, "alexnet-prepare") == (
        f"alexnet-prepare: error: --output={small_disk}/p: no space left on device; the shards written so far are "
        f"kept: free space and rerun the same command to resume")
    kept = list((small_disk / "p").glob("prepared-train*"))
    assert kept and all(p.stat().st_size == 2 * 196667 for p in kept)  # whole shards only
    # Space freed (the tmpfs made larger): the same command resumes from the kept shards and completes.
    from alexnet_tf import data

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = cli("prepare", *args)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {len(kept)} shard(s) already written" in again.stdout
    assert data.load_dataset(f"prepared:{small_disk}/p").num_train > 0


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(small_disk, workdir, trained, shapes_folder):
    proc = cli("export", f"--workdir={workdir}", f"--export_dir={small_disk}/export", "--tflite=float32")
    assert proc.returncode == 1
    assert "no space left on device while writing" in one_error_line(proc, "alexnet-export")
    assert not list(small_disk.rglob("*.partial")) and not list(small_disk.rglob("*.tflite"))

    proc = cli("train", *train_args(small_disk / "run", shapes_folder, trained / "data", 4, "--ckpt_every=2"))
    assert proc.returncode != 0
    line = one_error_line(proc)
    assert "no space left on device while writing" in line and "the last complete checkpoint is" in line


def test_a_tfds_dataset_that_needs_a_download_fails_fast_without_network(tmp_path):
    """No network: every connection goes to a closed port on loopback (a proxy that is not there)."""
    from helpers import subprocess_env

    env = subprocess_env(HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    started = time.time()
    proc = cli("train", "--dataset=mnist", f"--data_dir={tmp_path}/data", f"--workdir={tmp_path}/run",
               "--preset=tiny", "--steps=1", "--export_dir=", env=env, timeout=300)
    assert proc.returncode == 1
    # TFDS's own download progress bars (tqdm) show the attempt; then one error line.
    errors = [l for l in proc.stderr.splitlines() if l.strip() and not re.search(r"Dl Completed|Dl Size|Extraction", l)
              and not set(l.strip()) <= set("\x1b[A ")]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    line = errors[0]
    assert line.startswith("alexnet-train: error: --dataset=mnist: is not prepared") and "needs a download" in line
    assert time.time() - started < 120  # TFDS's retries took 211 s here


# ----------------------------------------------------------------------------
# Issue 22, the prediction cases: what is printed is what happened
# ----------------------------------------------------------------------------

def test_predict_features_go_to_exactly_the_path_given_and_a_folder_is_refused(tmp_path, exported, shapes_folder):
    import numpy as np

    images = sorted(sorted(shapes_folder.iterdir())[0].iterdir())[:3]
    target = tmp_path / "feat_out"  # no .npy suffix: numpy's np.save would have written feat_out.npy
    proc = cli("predict", f"--model={exported['saved']}", f"--features={target}", "--batch_size=2", *images)
    assert proc.returncode == 0, proc.stderr
    assert f"-> {target} " in proc.stdout and not (tmp_path / "feat_out.npy").exists()
    assert np.load(target).shape == (3, 512)  # rows of two batches, one file
    proc = cli("predict", f"--model={exported['saved']}", f"--features={tmp_path}", *images)
    assert proc.returncode == 2
    assert f"--features={tmp_path}: is a folder" in one_error_line(proc, "alexnet-predict")
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.npy"))


def test_predict_writes_a_file_name_with_a_newline_on_one_line(tmp_path, exported, shapes_folder):
    odd = tmp_path / "two\nlines.jpg"
    odd.write_bytes(sorted(sorted(shapes_folder.iterdir())[0].iterdir())[0].read_bytes())
    proc = cli("predict", f"--model={exported['saved']}", odd)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path}/two\\nlines.jpg: "), lines


def test_a_model_that_outputs_non_finite_probabilities_is_an_error_not_a_result(tmp_path):
    import numpy as np

    from alexnet_tf import predict

    class Broken:  # what a model with a NaN weight gives: NaN for every class
        path, class_names = tmp_path / "model", [f"c{i}" for i in range(10)]

        def probabilities(self, views):
            return np.full((len(views), 10), np.nan, np.float32)

    batch = [predict.Item(tmp_path / "a.jpg", np.zeros((67, 67, 3), np.float32), None)]
    with pytest.raises(predict.PredictError, match=r"model=.*: gives non-finite probabilities .* for .*a\.jpg"):
        predict.classify(Broken(), batch)


def test_a_batch_larger_than_the_training_split_is_refused_in_one_line(trained, shapes_folder, tmp_path):
    proc = cli("train", *train_args(tmp_path / "new", shapes_folder, trained / "data", 1, "--batch_size=100000"))
    assert proc.returncode == 2
    assert re.search(r"--batch_size=100000: larger than the training split of folder:.* \(\d+ images\)",
                     one_error_line(proc)), proc.stderr
    assert not (tmp_path / "new").exists()  # a refused run leaves no workdir holding only its .lock


def test_a_refused_run_keeps_a_workdir_it_did_not_create(trained, shapes_folder, tmp_path):
    (tmp_path / "mine").mkdir()
    proc = cli("train", *train_args(tmp_path / "mine", shapes_folder, trained / "data", 1, "--batch_size=100000"))
    assert proc.returncode == 2 and (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_a_garbage_tf_config_is_named_and_ignored_out_loud_by_other_strategies(monkeypatch, tmp_path, shapes_folder,
                                                                              trained):
    from alexnet_tf import cluster

    garbage = '{"cluster": {"worker": ["a:1"]}, "task": '
    monkeypatch.setenv("TF_CONFIG", garbage)
    proc = cli("train", *train_args(tmp_path / "run", shapes_folder, trained / "data", 1, "--strategy=multi_worker"))
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "TF_CONFIG=" in line and "not valid JSON" in line and "Expecting value" in line, line
    # alexnet-train blocks SIGTERM while a cluster starts; refused first, it must not leave it blocked (the
    # processes this one starts later would inherit the mask and ignore SIGTERM).
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    notes = []
    cluster.check_tf_config("default", notes.append)  # what a single-process run says before it starts
    with pytest.raises(ValueError) as parse:
        json.loads(garbage)
    assert notes == [f"note: TF_CONFIG is set but not valid JSON: {parse.value}; ignored (only "
                     f"--strategy=multi_worker reads it)"]
    monkeypatch.setenv("TF_CONFIG", "[1, 2]")
    with pytest.raises(cluster.ClusterError, match=r"TF_CONFIG='\[1, 2\]': not a JSON object"):
        cluster.check_tf_config("multi_worker")


def test_exports_at_once_never_share_a_version_and_a_killed_ones_folder_is_removed(trained, tmp_path):
    import subprocess

    from alexnet_tf import export

    model, _, prep = export.load_trained(trained / "run", log=lambda *_: None)
    target = tmp_path / "export"
    (target / "1.partial").mkdir(parents=True)  # another export, still running (this process owns it)
    (target / "1.partial" / ".owner").write_text(str(os.getpid()))
    gone_pid = subprocess.Popen(["true"])  # a process that has ended
    gone_pid.wait()
    (target / "2.partial").mkdir()  # a killed export's leftovers
    (target / "2.partial" / ".owner").write_text(str(gone_pid.pid))
    (target / "3.partial").mkdir()  # the same, written before exports recorded their owner
    logs = []
    path = export.export_savedmodel(model, prep, target, log=logs.append)
    assert path == target / "2" and (path / "saved_model.pb").exists() and not (path / ".owner").exists()
    assert (target / "1.partial").exists()  # the running one is left alone
    assert not (target / "2.partial").exists() and not (target / "3.partial").exists()
    assert logs == [f"removed {target / '2.partial'}: left by an export that did not finish",
                    f"removed {target / '3.partial'}: left by an export that did not finish"]
    # The version the running export claimed cannot be asked for either.
    with pytest.raises(export.ExportError, match=r"1: another export is writing this version now"):
        export.export_savedmodel(model, prep, target, version=1, log=logs.append)


def test_a_checkpoint_with_non_finite_weights_is_refused_by_export_and_init_from(workdir, tmp_path):
    import dataclasses

    import numpy as np

    from alexnet_tf import checkpoints, runs, train_state
    from alexnet_tf.workdir import WorkdirError

    # A trainer's checkpoint whose conv1_a kernel has one NaN, as a run that diverged between saves leaves it.
    record, names = runs.read_run(workdir)
    state = train_state.build_state(record.config, dataclasses.replace(record.model, num_classes=len(names)),
                                 tf.distribute.get_strategy())
    state.checkpoint.restore(tf.train.latest_checkpoint(str(workdir / "checkpoints"))).expect_partial()
    kernel = state.model.get_layer("conv1_a").kernel
    kernel.assign(np.where(np.arange(kernel.numpy().size).reshape(kernel.shape) == 0, np.nan, kernel.numpy()))
    broken = state.checkpoint.write(str(workdir / "checkpoints" / "broken"))
    for flag in ("workdir", "init_from"):
        with pytest.raises(WorkdirError, match=rf"{flag}=.*broken: non-finite weights \(NaN or inf\) in "
                                                    r"conv1_a/kernel; "):
            checkpoints.load_model(workdir, broken, log=lambda *_: None, flag=flag)
    proc = cli("export", f"--workdir={workdir}", f"--checkpoint={broken}", f"--export_dir={tmp_path}/export")
    assert proc.returncode == 1 and "non-finite weights" in one_error_line(proc, "alexnet-export")
    assert not (tmp_path / "export" / "1").exists()


def test_init_from_errors_name_init_from(tmp_path):
    from alexnet_tf import runs
    from alexnet_tf.workdir import WorkdirError

    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkdirError, match=r"^init_from=.*empty: no config\.json"):
        runs.make_config(init_from=str(tmp_path / "empty"), dataset="folder:/x")


@pytest.mark.parametrize("phase", ["make_strategy", "load_dataset", "restore_newest"])
def test_sigterm_while_a_run_starts_is_one_line_and_writes_nothing(workdir, shapes_folder, trained, monkeypatch,
                                                                   phase):
    """SIGTERM in each start-up phase (connecting, the dataset, the restore of a resumed run): Stopped, which
    alexnet-train prints as one line with 143, instead of dying without a word."""
    from alexnet_tf import checkpoints, cluster, data, shutdown, training
    from helpers import tiny_config

    module = {"make_strategy": cluster, "load_dataset": data, "restore_newest": checkpoints}[phase]
    real = getattr(module, phase)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at once, in this thread, to the handler in place
        return real(*args, **kwargs)

    monkeypatch.setattr(module, phase, signalled)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())

    def unhandled(signum, frame):  # what the test sees if the trainer has no handler of its own there
        raise AssertionError("SIGTERM reached the handler in place before the run")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(shutdown.Stopped, match=r"^stopped by SIGTERM while starting, before the first step") as e:
            training.train(tiny_config(workdir, shapes_folder, trained / "data", steps=8, ckpt_every=2, eval_every=6,
                                       val_fraction=0.05), log=lambda *a: None)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the previous handler is back
        assert e.value.status == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
