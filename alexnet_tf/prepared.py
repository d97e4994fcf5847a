"""Prepared datasets: any dataset this project reads, stored once as training reads it before the random crop
(every image's central square at 256x256, the paper's Section 2), so that an epoch no longer decodes and
resizes full-size JPEGs.

- `jpeg256`: the square re-encoded as a JPEG of quality `JPEG_QUALITY` (about 20 KB an image);
- `raw256`: the square's uint8 pixels (196,608 bytes an image), which training only has to read.

A prepared dataset is a TFDS dataset in one folder (TFRecord shards plus TFDS's `dataset_info.json` and
`features.json`, written with `tfds.folder_dataset.write_metadata`, the documented route for datasets written
by other means), so `tfds.builder_from_directory(DIR)` reads it too; `alexnet_tf_prepared.json` beside it says
what it was prepared from, the source's class names and the source's statistics (the mean and colour basis
training uses are those of the source, not of the re-encoded squares).

Preparation is sharded: shard k of a split holds the split's images k*S .. (k+1)*S-1 in the source's order.
Each shard is written to a temporary file and renamed when complete, so a killed preparation resumes from the
shards it finished, and tasks on several machines (`task`, `tasks`) prepare disjoint shards into one shared
folder; whichever task finds every shard done writes the metadata. Until then `load` refuses the folder.
"""

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from alexnet_tf import preprocessing, shards, workdir
from alexnet_tf.config import PREPARED_PREFIX, PREPARED_RECORD
from alexnet_tf.sources import DatasetError, Source

FORMATS = ("jpeg256", "raw256")
SIZE = preprocessing.RESIZE
JPEG_QUALITY = 90
# Images per shard: about 80 MB of jpeg256 or 100 MB of raw256, near what TFDS aims for.
SHARD_SIZE = {"jpeg256": 4096, "raw256": 512}
RECORD = PREPARED_RECORD
PLAN = "alexnet_tf_plan.json"  # written first: what a resumed preparation must match
SPLITS = ("train", "validation")
PREFIX = PREPARED_PREFIX


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a preparation writes: the source, the format, and how many images go into how many shards."""
    source: str
    format: str
    quality: int
    shard_size: int
    counts: dict  # split -> number of images

    def shards(self, split):
        return max(1, math.ceil(self.counts[split] / self.shard_size))

    def shard_path(self, root, split, k):
        return Path(root) / f"prepared-{split}.tfrecord-{k:05d}-of-{self.shards(split):05d}"


def features(fmt, num_classes):
    """The TFDS features of a prepared dataset in `fmt`."""
    import tensorflow_datasets as tfds

    image = (tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="jpeg") if fmt == "jpeg256" else
             tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8, encoding="bytes"))
    return tfds.features.FeaturesDict({"image": image, "label": tfds.features.ClassLabel(num_classes=num_classes)})


def prepare(source, output, fmt, *, statistics, quality=JPEG_QUALITY, shard_size=None, task=0, tasks=1,
            log=print, progress=True):
    """Prepares `source` into the folder `output` in `fmt` (the shards of this task that are not done yet),
    and, when every shard of every task is done, writes the metadata. Returns True if the dataset is complete."""
    if fmt not in FORMATS:
        raise DatasetError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    if not 0 <= task < tasks:
        raise DatasetError(f"task={task}: must be in 0..{tasks - 1} (tasks={tasks})")
    if not 1 <= quality <= 100:
        raise DatasetError(f"quality={quality}: must be in 1..100")
    root = Path(output).expanduser()
    plan = _plan(root, Plan(source=source.name, format=fmt, quality=quality if fmt == "jpeg256" else 0,
                            shard_size=shard_size or SHARD_SIZE[fmt],
                            counts={"train": source.num_train, "validation": source.num_validation}))
    if (root / RECORD).exists():
        log(f"{root} is already a complete prepared dataset of {source.name} ({fmt}); nothing to do")
        return True
    todo = {split: [k for k in range(plan.shards(split)) if k % tasks == task
                    and not plan.shard_path(root, split, k).exists()] for split in SPLITS}
    _remove_stale_shards(root, task, tasks)
    total = sum(min(plan.shard_size, plan.counts[s] - k * plan.shard_size) for s in SPLITS for k in todo[s])
    done_before = sum(plan.shards(s) for s in SPLITS) - sum(len(v) for v in todo.values())
    if done_before:
        log(f"resuming: {done_before} shard(s) already written in {root}")
    log(f"preparing {total} images of {source.name} as {fmt} into {root}"
        + (f" (task {task} of {tasks})" if tasks > 1 else ""))
    advance = _progress(total, progress)
    for split in SPLITS:
        if todo[split]:
            _write_shards(source, plan, root, split, todo[split], advance)
    return _finish(source, plan, root, statistics, log)


def _plan(root, plan):
    """The plan of the preparation in `root`: `plan`, recorded if the folder is new, or the recorded one if it
    is the same preparation; a folder holding another one is refused."""
    path = root / PLAN
    if path.exists():
        found = _read_plan(root)
        if found != plan:
            raise DatasetError(f"output={root}: holds a preparation of {found.source} as {found.format} "
                               f"(quality {found.quality}, {found.shard_size} images a shard, {found.counts}); "
                               f"this one is {plan.source} as {plan.format} (quality {plan.quality}, "
                               f"{plan.shard_size} a shard, {plan.counts}). Use another --output, or the same flags")
        return found
    if root.exists() and any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DatasetError(f"output={root}: is not empty and holds no preparation; give a new or empty folder")
    root.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps(dataclasses.asdict(plan), indent=2))
    return plan


def _read_plan(root):
    return Plan(**json.loads((Path(root) / PLAN).read_text()))


def _write_shards(source, plan, root, split, shards, advance):
    """Writes the given shards of `split`: the images are read in the source's order, only those of `shards`
    decoded and re-encoded (on every core, in order), and each shard renamed into place once complete."""
    examples = source.train if split == "train" else source.validation
    wanted = tf.constant(shards, tf.int64)
    size = plan.shard_size

    def encode(image, label):
        square = source.square(image, SIZE)
        stored = tf.io.encode_jpeg(square, quality=plan.quality) if plan.format == "jpeg256" else square
        return stored, label

    ds = (examples.enumerate()
          .filter(lambda i, ex: tf.reduce_any(tf.equal(i // size, wanted)))
          .map(lambda i, ex: (i // size, *encode(*ex)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .prefetch(tf.data.AUTOTUNE))
    spec = features(plan.format, len(source.class_names))
    writer, shard, tmp = None, None, None
    for k, stored, label in ds.as_numpy_iterator():
        if k != shard:
            if writer is not None:
                _close(writer, tmp, plan.shard_path(root, split, shard))
            shard = k
            # Each writer its own temporary name: two runs of one task at once each finish (issue 32).
            tmp = root / f".{plan.shard_path(root, split, k).name}.{os.getpid()}.tmp"
            writer = tf.io.TFRecordWriter(str(tmp))
        writer.write(spec.serialize_example({"image": stored, "label": int(label)}))
        advance()
    if writer is not None:
        _close(writer, tmp, plan.shard_path(root, split, shard))


def _remove_stale_shards(root, task, tasks):
    """Removes this task's half-written shards left by killed runs: those whose writer (the process id in the
    name, `.prepared-train.tfrecord-00003-of-00009.<pid>.tmp`) is no longer running."""
    for stale in root.glob(".prepared-*.tfrecord-*.tmp"):
        shard, pid = stale.name.split("-")[2], stale.name.split(".")[-2]
        if int(shard) % tasks == task and not (pid.isdigit() and workdir.alive(int(pid))):
            stale.unlink(missing_ok=True)


def _close(writer, tmp, path):
    writer.close()
    os.replace(tmp, path)


def _finish(source, plan, root, statistics, log):
    """Writes TFDS's metadata and the record if every shard of every task is there; says what is missing
    otherwise. Returns whether the dataset is complete."""
    import tensorflow_datasets as tfds

    missing = [(s, k) for s in SPLITS for k in range(plan.shards(s)) if not plan.shard_path(root, s, k).exists()]
    if missing:
        log(f"this task's shards are done; {len(missing)} shard(s) of other tasks are still missing in {root}")
        return False
    template = tfds.core.ShardedFileTemplate(data_dir=root, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                                             dataset_name="prepared", filetype_suffix="tfrecord")
    # The shard lengths are known from the plan: TFDS need not read 1.28M records back to count them.
    splits = [tfds.core.SplitInfo(name=s, shard_lengths=[min(plan.shard_size, plan.counts[s] - k * plan.shard_size)
                                                         for k in range(plan.shards(s))],
                                  num_bytes=sum(plan.shard_path(root, s, k).stat().st_size
                                                for k in range(plan.shards(s))), filename_template=template)
              for s in SPLITS]
    tfds.folder_dataset.write_metadata(data_dir=root, features=features(plan.format, len(source.class_names)),
                                       split_infos=splits, filename_template=template, check_data=False,
                                       description=f"{source.name} prepared by alexnet-prepare as {plan.format}")
    record = {"format": plan.format, "quality": plan.quality, "size": SIZE, "source": source.name,
              "class_names": list(source.class_names), "statistics": statistics,
              "num_train": plan.counts["train"], "num_validation": plan.counts["validation"]}
    _write_atomically(root / RECORD, json.dumps(record, indent=2))
    size = disk_size(root)
    log(f"prepared {source.name} as {plan.format} in {root}: {size / 2**20:.1f} MiB on disk "
        f"({size / max(1, sum(plan.counts.values())):.0f} bytes an image)")
    return True


def disk_size(root):
    return sum(p.stat().st_size for p in Path(root).glob("prepared-*.tfrecord-*"))


def _write_atomically(path, text):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _progress(total, shown):
    """advance() counts one image written; Keras' progress bar shows the count, images/s and the ETA."""
    import keras

    bar = keras.utils.Progbar(total, verbose=1 if shown else 0, unit_name="image", stateful_metrics=["img/s"])
    started, done = time.perf_counter(), [0]

    def advance():
        done[0] += 1
        if done[0] % 64 == 0 or done[0] == total:
            bar.update(done[0], [("img/s", done[0] / max(time.perf_counter() - started, 1e-9))])

    return advance


def load(path):
    """The prepared dataset in the folder `path` as a `Source` (training shuffles its shards), with the
    source's class names and statistics. An incomplete, damaged or mislabelled preparation is refused in one
    line naming what is wrong."""
    root = Path(path).expanduser()
    name = f"{PREFIX}{path}"
    if not (root / RECORD).exists():
        _refuse_unfinished(root, name)
    record, builder = _metadata(root, name)
    jpeg = record["format"] == "jpeg256"
    import tensorflow_datasets as tfds

    # No cardinality assertion: under the tf.data service's dynamic sharding each worker reads part of a split.
    read = tfds.ReadConfig(assert_cardinality=False)

    def split(name):
        ds = builder.as_dataset(split=name, shuffle_files=name == "train", read_config=read,
                                decoders={"image": tfds.decode.SkipDecoding()} if jpeg else None)
        return ds.map(lambda ex: (ex["image"], ex["label"]))

    def decode(image, size=SIZE):
        # uint8 at the stored size: the pipelines batch it as uint8 (a quarter of float32's bytes).
        square = tf.io.decode_jpeg(image, channels=3) if jpeg else image
        square.set_shape([SIZE, SIZE, 3])
        return square if size == SIZE else preprocessing.center_square(square, size)

    return Source(name=name, class_names=record["class_names"], train=split("train"),
                  validation=split("validation"), num_train=record["num_train"],
                  num_validation=record["num_validation"], decode=decode, statistics=record["statistics"],
                  records=_records(root, name, jpeg), parse=shards.parser(jpeg))


def _refuse_unfinished(root, name):
    if not (root / PLAN).exists():
        raise DatasetError(f"dataset={name}: is not a prepared dataset (no {RECORD}; alexnet-prepare writes it)")
    plan = _read_plan(root)
    done = sum(plan.shard_path(root, s, k).exists() for s in SPLITS for k in range(plan.shards(s)))
    total = sum(plan.shards(s) for s in SPLITS)
    if done == total:  # every shard is there: only the record that marks it complete is missing
        raise DatasetError(f"dataset={name}: has all {total} shards but no {RECORD}, which marks a "
                           f"preparation complete; run alexnet-prepare again with the same flags to write it")
    raise DatasetError(f"dataset={name}: the preparation is not finished ({done} of {total} shards); run "
                       f"alexnet-prepare again with the same flags to finish it")


def _metadata(root, name):
    """(our record, TFDS's builder) of a complete preparation; a file among them that cannot be read is named."""
    import tensorflow_datasets as tfds

    try:
        record = json.loads((root / RECORD).read_text())
        record["format"], record["class_names"], record["num_train"]  # noqa: B018  (a KeyError names the field)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"dataset={name}: {root / RECORD} cannot be read ({type(e).__name__}: {e}); prepare "
                           f"the dataset again into a new --output") from None
    try:
        return record, tfds.builder_from_directory(str(root))
    except Exception as e:  # noqa: BLE001  TFDS raises JSON, protobuf and its own errors for damaged metadata
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        where = next((root / f for f in ("dataset_info.json", "features.json") if not _is_json(root / f)),
                     f"TFDS's metadata in {root}")
        raise DatasetError(f"dataset={name}: {where} cannot be read ({why}); prepare the dataset again into a new "
                           f"--output") from None


def _is_json(path):
    try:
        json.loads(Path(path).read_text())
        return True
    except (OSError, ValueError):
        return False


def _records(root, name, jpeg):
    """Each split's shard files, absolute (tf.data service workers may run elsewhere), checked
    (`shards.check`: all there, the first in the recorded format)."""
    plan = _read_plan(root)
    records = {s: [str(plan.shard_path(root.resolve(), s, k)) for k in range(plan.shards(s))] for s in SPLITS}
    shards.check(records, name, jpeg, RECORD)
    return records


def verify(path, *, log=print, progress=True):
    """Reads every record of the prepared dataset in the folder `path`, parsing and decoding each as training
    does, and checks each shard's count against the plan. Returns the problems found, as lines naming the
    file (none: the dataset is whole)."""
    root = Path(path).expanduser()
    if not (root / PLAN).exists():
        raise DatasetError(f"output={root}: holds no preparation (no {PLAN}) to verify")
    plan = _read_plan(root)
    parse = shards.parser(plan.format == "jpeg256")
    expected = {plan.shard_path(root, s, k): min(plan.shard_size, plan.counts[s] - k * plan.shard_size)
                for s in SPLITS for k in range(plan.shards(s))}
    log(f"verifying {len(expected)} shards ({sum(expected.values())} images) of {root}")
    advance, problems = _progress(sum(expected.values()), progress), []
    for shard, count in expected.items():
        if not shard.exists():
            problems.append(f"{shard}: missing ({count} images)")
            continue
        read, why = shards.read_through(shard, parse, advance)
        if why:
            problems.append(f"{shard}: damaged after {read} of {count} records ({why})")
        elif read != count:
            problems.append(f"{shard}: holds {read} records, the plan says {count}")
    if progress:
        print(flush=True)  # end the progress bar's line
    if not (root / RECORD).exists():
        problems.append(f"{root / RECORD}: missing (the preparation is not finished, or the file was deleted)")
    return problems
