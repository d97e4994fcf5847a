"""A run: its TrainConfig made from flat values (`make_config`, as the flags give them), and its record in the
workdir, config.json (with classes.json). This module is the only reader (`read_run`) and writer
(`write_run`) of config.json: alexnet-train and alexnet-import write through it, and every command that
reads a workdir (resume, export, fine-tuning, the study, the Keras application) reads through it, as the
same types (`RunRecord`, `TrainConfig`, `ModelConfig`).

TensorFlow-free, like `config`: the tools make and check a config before TensorFlow starts.
"""

import dataclasses
import json
import os
from pathlib import Path

from alexnet_tf import workdir as workdir_lib
from alexnet_tf.config import (EMBEDDED_DATASET, MODEL_FLAGS, PREPARED_PREFIX, PREPARED_RECORD, PRESETS, ModelConfig,
                               TrainConfig, default_workdir, recipe_defaults)
from alexnet_tf.workdir import WorkdirError


def prepared_source(dataset):
    """The dataset a `prepared:PATH` dataset was prepared from (as its record says; the name itself if it is
    not one, or its record cannot be read yet)."""
    if not dataset.startswith(PREPARED_PREFIX):
        return dataset
    try:
        return json.loads((Path(dataset[len(PREPARED_PREFIX):]).expanduser() / PREPARED_RECORD)
                          .read_text())["source"]
    except (OSError, ValueError, KeyError):
        return dataset


def make_config(**values):
    """A TrainConfig from flat `values` (TrainConfig's fields and the MODEL_FLAGS, as the flags name them).
    A field given as None (or not at all) takes the recipe's value for the dataset, then the default; the
    workdir defaults to runs/<dataset>-<preset>. With `init_from`, the model fields default to those the
    weights were trained with (read from its workdir); `recipe="original_code"` (without `init_from`)
    brings the 2012 run's schedule unless one is given."""
    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - set(TrainConfig.__dataclass_fields__) - set(MODEL_FLAGS) - {"model"})
    if unknown:
        raise TypeError(f"make_config: unknown field(s) {', '.join(unknown)}")
    dataset = given.get("dataset", EMBEDDED_DATASET)
    merged = {**recipe_defaults(prepared_source(dataset), given.get("init_from")), **given}
    base = merged.pop("model", ModelConfig())
    if given.get("init_from"):
        # The model must be the one the weights were trained as: its sizes and variant.
        source = read_run(source_workdir(given["init_from"]), flag="init_from")[0].model
        base = ModelConfig(**{f: getattr(source, f) for f in ("preset", "width", "image_size", "resize", "init_std",
                                                               "lrn", "pool", "towers", "recipe")})
    elif merged.get("recipe") == "original_code" and "lr_schedule" not in given:
        merged["lr_schedule"] = "original_code"
    model = {f: merged.pop(f) for f in MODEL_FLAGS if f in merged}
    if model.get("lrn") == "none":
        model["lrn"] = None
    preset = model.pop("preset", base.preset)
    sizes = PRESETS.get(preset, {}) if preset != base.preset else {}
    merged["model"] = dataclasses.replace(base, preset=preset, **sizes, **model)
    merged.setdefault("workdir", default_workdir(dataset, preset))
    if merged.get("tower_devices") is not None:
        merged["tower_devices"] = tuple(merged["tower_devices"])
    return TrainConfig(**merged)


# What may change when a run resumes: how long it runs, how it reports and evaluates, where things are, and
# how it is placed. Everything else shapes the model, the data or the optimizer state.
RESUMABLE_CHANGES = ("steps", "epochs", "log_every", "eval_every", "ckpt_every", "max_eval_images", "ten_crop",
                     "data_dir", "workdir", "strategy", "tower_devices", "cpu_devices", "jit", "deterministic",
                     "init_from", "max_pixels", "data_service", "data_service_timeout",
                     "cluster_timeout")


def resume_conflicts(config, recorded):
    """[(flag, recorded value, new value)] for each setting of `config` that differs from the `recorded`
    TrainConfig of the run it would resume, and may not change on resume."""
    conflicts = [(f, getattr(recorded, f), getattr(config, f)) for f in TrainConfig.__dataclass_fields__
                 if f not in RESUMABLE_CHANGES + ("model",) and getattr(recorded, f) != getattr(config, f)]
    return conflicts + [(f, getattr(recorded.model, f), getattr(config.model, f)) for f in MODEL_FLAGS
                        if getattr(recorded.model, f) != getattr(config.model, f)]


@dataclasses.dataclass
class RunRecord:
    """What a workdir's config.json holds: the run's settings, what its data turned out to be (the number of
    images and the statistics the model was trained with), and how its schedule was laid out.
    alexnet-import writes one too, with `imported_from`."""
    config: TrainConfig
    statistics: dict
    num_train: int | None = None
    num_validation: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    replicas: int | None = None
    imported_from: str | None = None
    weights_format: str | None = None

    @property
    def model(self):
        return self.config.model


FILES = ("config.json", "classes.json")


def write_run(workdir, record, class_names):
    """Writes config.json and classes.json into `workdir`, each whole under a temporary name, then renamed."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "config"}
    for name, content in zip(FILES, ({"format": 2, **dataclasses.asdict(record.config), **fields},
                                     list(class_names))):
        tmp = workdir / f".{name}.tmp"
        tmp.write_text(json.dumps(content, indent=2 if name == "config.json" else 1, default=str))
        os.replace(tmp, workdir / name)


def source_workdir(path):
    """The workdir a workdir or checkpoint path (<workdir>/checkpoints/ckpt-N) belongs to."""
    path = Path(path)
    return path.parent.parent if not path.is_dir() and path.parent.name == "checkpoints" else path


def read_run(workdir, flag="workdir"):
    """(RunRecord, class names) of an alexnet-train or alexnet-import workdir. Errors name `flag`."""
    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
        raise WorkdirError(f"{flag}={workdir}: no config.json; is this an alexnet-train or alexnet-import workdir?")
    raw, names = _read_json(workdir / "config.json", dict, flag), _read_json(workdir / "classes.json", list, flag)
    try:
        raw = _upgrade(raw)
        model = ModelConfig(**_known(ModelConfig, raw["model"]))
        config = TrainConfig(**{**_known(TrainConfig, raw), "model": model})
        if config.tower_devices is not None:
            config.tower_devices = tuple(config.tower_devices)
        record = RunRecord(config=config, **_known(RunRecord, raw))
    except (TypeError, KeyError, AttributeError) as e:
        raise WorkdirError(f"{flag}={workdir}: config.json does not hold a run's settings ({e})") from None
    return record, names


def _known(cls, raw):
    return {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw and f.name not in ("model", "config")}


def _upgrade(raw):
    """A config.json of the first format (every setting at the top level, the sizes as `preset_values`) in
    today's layout, so that older workdirs still resume, export and fine-tune."""
    if "model" in raw:
        return raw
    preset = raw.get("preset", "paper")
    sizes = raw.get("preset_values") or PRESETS.get(preset, PRESETS["paper"])
    model = {"preset": preset, **{k: sizes[k] for k in ("width", "image_size", "resize", "init_std") if k in sizes},
             "num_classes": raw.get("num_classes"),
             **{k: raw[k] for k in MODEL_FLAGS if k in raw and k != "preset"}}
    return {**{k: v for k, v in raw.items() if k not in MODEL_FLAGS}, "model": model}


def _read_json(path, kind, flag):
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise WorkdirError(f"{flag}={path.parent}: {path.name} is missing (alexnet-train and alexnet-import write "
                           f"it)") from None
    except OSError as e:
        raise WorkdirError(f"{flag}={path.parent}: cannot read {path.name} ({e.strerror})") from None
    except ValueError as e:
        raise WorkdirError(f"{flag}={path.parent}: {path.name} is not valid JSON ({e}); it may have been "
                           f"truncated") from None
    if not isinstance(value, kind):
        raise WorkdirError(f"{flag}={path.parent}: {path.name} holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def recorded(workdir):
    """The workdir's RunRecord, or None where it has no config.json yet (a fresh run)."""
    if not (Path(workdir) / "config.json").exists():
        return None
    return read_run(workdir)[0]


def check_resume(config, recorded_run):
    """Refuses, in one line naming each flag, to train in an imported workdir, or to resume with settings
    that change the model, the data or the optimizer state."""
    if recorded_run is None:
        return
    if recorded_run.imported_from:
        raise WorkdirError(f"workdir={config.workdir}: holds weights imported by alexnet-import; fine-tune them into "
                           f"a new workdir with --init_from={config.workdir}")
    if not workdir_lib.checkpoints_on_disk(Path(config.workdir) / "checkpoints"):
        return
    conflicts = resume_conflicts(config, recorded_run.config)
    if conflicts:
        changes = "; ".join(f"--{f}={_flag(new)} (recorded: {_flag(old)})" for f, old, new in conflicts)
        raise WorkdirError(f"workdir={config.workdir}: cannot resume with changed settings: {changes}. Rerun with "
                           f"the recorded values, or use a new --workdir; only --steps, --epochs, logging, "
                           f"evaluation and placement may change on resume")


def _flag(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else "none" if value is None else value
