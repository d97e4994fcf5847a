"""The configuration module and the tools' front door: recipes, flag checks before TensorFlow, --help, quiet runs."""

import re
import subprocess
import sys

import pytest

from alexnet_tf import config as cfg, runs
from helpers import ROOT, cli, subprocess_env


TOOLS = ("train", "export", "predict", "benchmark", "study", "import_weights", "prepare", "data_service")


def test_config_and_tools_import_without_tensorflow():
    # One fresh Python per check would cost a start-up each; one imports them in turn and says after each
    # whether TensorFlow or Keras came with it.
    code = ("import sys, importlib; import alexnet_tf.config, alexnet_tf.runs; "
            f"print([(t, 'tensorflow' in sys.modules or 'keras' in sys.modules) for t in {TOOLS!r} "
            "if importlib.import_module(f'tools.{t}')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr([(t, False) for t in TOOLS])


def test_make_config_takes_the_recipe_then_the_papers_defaults():
    embedded = runs.make_config()
    assert embedded.dataset == cfg.EMBEDDED_DATASET and embedded.workdir == "runs/alexnet_shapes-paper"
    assert {f: getattr(embedded, f) for f in cfg.RECIPE_FIELDS} == cfg.EMBEDDED_RECIPE
    paper = runs.make_config(dataset="folder:/data/x", preset="tiny", lr=None, epochs=5)
    assert paper.lr == 0.01 and paper.lr_schedule == "plateau" and paper.epochs == 5 and paper.warmup_steps == 0
    assert paper.workdir == "runs/folder_data_x-tiny"
    assert runs.make_config(tower_devices=["/CPU:0", "/CPU:1"]).tower_devices == ("/CPU:0", "/CPU:1")
    with pytest.raises(TypeError, match="unknown field.*colour"):
        runs.make_config(colour="red")


def test_help_lists_the_tools_own_flags_and_exits_0():
    proc = cli("train", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--batch_size", "--lr", "--workdir", "--tower_devices", "--export_dir"):
        assert flag in proc.stdout
    assert "(default: '0.9')" in proc.stdout  # the momentum's default, from TrainConfig
    assert "--xla_" not in proc.stdout and "--helpfull" in proc.stdout  # others' flags stay behind --helpfull


def test_a_tiny_training_run_prints_no_library_chatter(tmp_path, shapes_folder):
    proc = cli("train", f"--dataset=folder:{shapes_folder}", f"--data_dir={tmp_path}/data",
               f"--workdir={tmp_path}/run", "--preset=tiny", "--batch_size=8", "--steps=2", "--eval_every=2",
               f"--export_dir={tmp_path}/export", process=True)  # TensorFlow's C++ log goes to the process's stderr
    assert proc.returncode == 0, proc.stderr
    chatter = re.compile(r"^[IWEF]\d{4} |oneDNN|cuda|cuInit|absl::InitializeLog|Constructing tf\.data|"
                         r"Sharding callback|^INFO:|^I\d{4}")
    noisy = [l for l in (proc.stdout + proc.stderr).splitlines() if chatter.search(l)]
    assert not noisy, noisy
    assert "validation accuracy:" in proc.stdout and f"SavedModel: {tmp_path}/export/1" in proc.stdout
    # --verbosity brings TensorFlow's own lines back.
    loud = cli("train", f"--dataset=folder:{shapes_folder}", f"--data_dir={tmp_path}/data",
               f"--workdir={tmp_path}/run", "--preset=tiny", "--batch_size=8", "--steps=2", "--export_dir=",
               "--verbosity=0", process=True)
    assert loud.returncode == 0 and chatter.search(loud.stderr), loud.stderr


@pytest.mark.parametrize("tool, flag, shown", [
    ("train", "--lr=0", "--lr=0.0: must be a finite number > 0"),
    ("train", "--train_layers=fc9", "--train_layers='fc9'"),
    ("study", "--variants=paper,huge", "--variants=paper,huge: choose from"),
])
def test_a_bad_flag_is_reported_before_tensorflow_starts(tmp_path, tool, flag, shown):
    # A stand-in `tensorflow` that fails loudly on import: the flag error must come first.
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('tensorflow was imported')\n")
    env = subprocess_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    proc = cli(tool, flag, f"--workdir={tmp_path}/w", env=env, timeout=60)
    assert proc.returncode == 2 and "tensorflow was imported" not in proc.stderr, proc.stderr
    assert shown in proc.stderr


def test_a_first_format_config_json_is_read_as_todays_types(tmp_path):
    """Workdirs written before config.json nested the network under "model" still resume, export and
    fine-tune: `read_run` upgrades the flat layout (sizes under `preset_values`)."""
    import json

    flat = {"dataset": "folder:/data/x", "workdir": str(tmp_path), "preset": "tiny", "lrn": None,
            "pool": "non_overlapping", "towers": 1, "batch_size": 8, "lr": 0.02, "num_classes": 3,
            "preset_values": {"width": 0.125, "image_size": 67, "resize": 76, "init_std": 0.02},
            "statistics": {"mean": [1.0, 2.0, 3.0]}, "total_steps": 4}
    (tmp_path / "config.json").write_text(json.dumps(flat))
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    record, names = runs.read_run(tmp_path)
    assert names == ["a", "b", "c"] and record.total_steps == 4 and record.statistics["mean"] == [1.0, 2.0, 3.0]
    model = record.model
    assert (model.preset, model.width, model.image_size, model.resize, model.init_std) == ("tiny", 0.125, 67, 76, 0.02)
    assert (model.lrn, model.pool, model.towers, model.num_classes) == (None, "non_overlapping", 1, 3)
    assert (record.config.batch_size, record.config.lr) == (8, 0.02)
