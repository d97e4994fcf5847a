"""alexnet-prepare: store a dataset once as training reads it, its images' central squares at 256x256, so that
training (and the tf.data service's workers) no longer decode full-size JPEGs every epoch.

    alexnet-prepare --dataset=imagenet2012 --format=jpeg256 --output=/data/imagenet-jpeg256
    alexnet-train --dataset=prepared:/data/imagenet-jpeg256 --preset=paper

Rerunning with the same flags resumes a killed preparation. On several machines sharing --output, run
task i of N on each (--task=i --tasks=N); the last to finish writes the metadata that makes it readable.
`alexnet-prepare --verify --output=DIR` reads a prepared folder back and names any damaged or missing shard.
"""

from absl import flags

from tools import cli

FLAGS = cli.flag_values()
flags.DEFINE_string("dataset", "alexnet_shapes", "The dataset to prepare: any name alexnet-train takes "
                    "('alexnet_shapes', 'imagenet2012', a TFDS name, 'folder:PATH').", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets), as "
                    "in training; the source's statistics are read or stored here.", flag_values=FLAGS)
flags.DEFINE_enum("format", "jpeg256", ["jpeg256", "raw256"], "jpeg256: each square re-encoded as a JPEG "
                  "(about 20 KB an image at quality 90); raw256: uint8 pixels (192 KiB an image, no decoding).",
                  flag_values=FLAGS)
flags.DEFINE_string("output", None, "The folder to write (train from it with --dataset=prepared:<output>).",
                    required=True, flag_values=FLAGS)
flags.DEFINE_integer("quality", 90, "JPEG quality of jpeg256.", lower_bound=1, upper_bound=100, flag_values=FLAGS)
flags.DEFINE_integer("shard_size", None, "Images per shard, the unit a resumed or split preparation picks up "
                     "(default: 4096 for jpeg256, 512 for raw256: about 100 MB each).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("task", 0, "This machine's task (0..tasks-1) when several prepare into one --output.",
                     lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("tasks", 1, "How many tasks prepare into --output; task i writes the shards k with "
                     "k % tasks == i.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_boolean("verify", False, "Check the prepared dataset in --output instead of preparing: read every "
                     "record as training does and count each shard against the plan; exit 1 naming each damaged, "
                     "short or missing file.", flag_values=FLAGS)
flags.DEFINE_float("val_fraction", 0.05, "For a folder dataset without val/: the fraction of each class held out "
                   "for validation, as in training.", flag_values=FLAGS)


def main(argv):
    return cli.main("alexnet-prepare", FLAGS, argv, _prepare, __doc__)


def _prepare(args):
    if args:
        cli.error("alexnet-prepare", f"unexpected arguments: {' '.join(args)}")
        return 2
    if FLAGS.task >= FLAGS.tasks:
        cli.error("alexnet-prepare", f"--task={FLAGS.task}: must be below --tasks={FLAGS.tasks}")
        return 2
    if FLAGS.verify:
        return _verify()
    try:
        cli.check_folder("output", FLAGS.output)
        _check_output_outside_the_source()
        if FLAGS.format == "raw256" and FLAGS["quality"].present:
            raise ValueError(f"--quality={FLAGS.quality}: applies to jpeg256 only; raw256 stores the pixels as they "
                             f"are")
    except ValueError as e:
        cli.error("alexnet-prepare", e)
        return 2
    cli.start_tensorflow(FLAGS)
    import tensorflow as tf

    from alexnet_tf import data, prepared, sources, statistics, workdir

    try:
        if FLAGS.dataset.startswith(prepared.PREFIX):
            raise sources.DatasetError(f"dataset={FLAGS.dataset}: is prepared already")
        source = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, val_fraction=FLAGS.val_fraction, ordered=True)
        sources.report(source, print)
        stats = statistics.dataset_statistics(source, FLAGS.data_dir)
        complete = prepared.prepare(source, FLAGS.output, FLAGS.format, statistics=stats, quality=FLAGS.quality,
                                    shard_size=FLAGS.shard_size, task=FLAGS.task, tasks=FLAGS.tasks)
    except (OSError, tf.errors.OpError) as e:
        if workdir.no_space(e):  # what is written is whole shards: a rerun resumes from them
            return cli.fail("alexnet-prepare", e, f"--output={FLAGS.output}: no space left on device; the shards "
                                                  f"written so far are kept: free space and rerun the same command "
                                                  f"to resume")
        return cli.fail("alexnet-prepare", e, f"--output={FLAGS.output}: {sources.reason(e)}"
                        if isinstance(e, tf.errors.OpError) else None)
    if complete:
        print(f"train from it with: alexnet-train --dataset=prepared:{FLAGS.output}")
    return 0


def _verify():
    cli.start_tensorflow(FLAGS)
    from alexnet_tf import prepared

    problems = prepared.verify(FLAGS.output)  # an unreadable folder: cli.EXIT_STATUS
    for line in problems:
        cli.error("alexnet-prepare", line)
    if problems:
        return 1
    print(f"{FLAGS.output}: every shard is whole and holds the images its plan says")
    return 0


def _check_output_outside_the_source():
    """A folder dataset's --output inside the folder would be read as one more class folder the next time the
    folder is trained on (or prepared): refused before anything is scanned."""
    from pathlib import Path

    if not FLAGS.dataset.startswith("folder:"):
        return
    source = Path(FLAGS.dataset[len("folder:"):]).expanduser().resolve()
    output = Path(FLAGS.output).expanduser().resolve()
    if output == source or source in output.parents:
        raise ValueError(f"--output={FLAGS.output}: is the source folder {source} or inside it, where it would "
                         f"be read as a class; give a folder outside it")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
