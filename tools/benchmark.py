"""alexnet-benchmark: how fast every part of alexnet_tf runs on this machine.

    alexnet-benchmark                      # everything, a readable table (12-20 minutes on 2 cores)
    alexnet-benchmark --sections=train,pipeline --json

Sections: forward (inference of the Keras model), matmul (the fp32 ceiling),
train (train step at --train_batches, fp32), precision (mixed precision and
XLA at batch 128), finetune (steps that train fc6-fc8 or fc8 only, against
the full step and their FLOP ratio), pipeline (the input pipeline alone on ImageNet-like
JPEGs or --dataset's images, as stored and prepared as jpeg256 and raw256: images/s a core,
bytes an image, cores to feed one GPU; and through a tf.data service on loopback), e2e
(training the paper model from each of those formats), inference (Keras, SavedModel, TFLite
variants; needs a trained --workdir for the agreement figures), serving (batch-1
latency and batch-64 throughput of the 1000-class paper model, untrained, as
SavedModel, each TFLite variant and ONNX Runtime, against the machine's limit:
its matmul ceiling and memory bandwidth, timed in turn with the models), memory (peak
resident memory of training at batch 128), profile (a TF profiler trace of the
fp32 train step at batch 128 in --profile_dir, and the time per layer and pass
read from it). Each figure is a median over --repeats runs after --warmup.
The table ends with the performance targets the measured sections allow
checking, each marked met or NOT MET (also under "targets" in --json).

See the trace in TensorBoard's Profile tab:
    tensorboard --logdir=runs/benchmark_profile
"""

import glob
import json
import os
import sys

from absl import flags

from alexnet_tf.bench.sections import SECTIONS  # TensorFlow-free until a section runs
from tools import cli

FLAGS = cli.flag_values()
flags.DEFINE_list("sections", list(SECTIONS), f"Which measurements to run, any of {','.join(SECTIONS)}.",
                  flag_values=FLAGS)
flags.DEFINE_list("forward_batches", ["1", "128"], "Batch sizes for the forward-pass timing.", flag_values=FLAGS)
flags.DEFINE_list("train_batches", ["32", "128", "256"], "Batch sizes for the fp32 train-step timing.",
                  flag_values=FLAGS)
flags.DEFINE_integer("repeats", 5, "Timed repetitions per measurement (after warm-up); the median is reported.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "Untimed calls before each measurement.", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("jpegs", 512, "ImageNet-like JPEGs (500x375) to generate for the pipeline sections (or "
                     "images of --dataset to read).",
                     lower_bound=64, flag_values=FLAGS)
flags.DEFINE_string("dataset", None, "The pipeline sections' images: the first --jpegs training images of this "
                    "dataset (any name alexnet-train takes) instead of generated ImageNet-like JPEGs.",
                    flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "TFDS data directory for --dataset.", flag_values=FLAGS)
flags.DEFINE_string("workdir", "runs/alexnet_shapes-paper",
                    "A trained alexnet-train workdir for the inference section (its model is exported to "
                    "SavedModel and TFLite and compared with Keras on validation images).", flag_values=FLAGS)
flags.DEFINE_string("profile_dir", "runs/benchmark_profile",
                    "Where the profile section writes its TF profiler trace (a TensorBoard log directory).",
                    flag_values=FLAGS)
flags.DEFINE_boolean("json", False, "Print machine-readable JSON instead of a table.", flag_values=FLAGS)


def positive_ints(name, values):
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        numbers = [0]
    if any(n < 1 for n in numbers):
        raise ValueError(f"--{name} must be positive integers, got {','.join(values)}")
    return numbers


def main(argv):
    return cli.main("alexnet-benchmark", FLAGS, argv, _benchmark, __doc__)


def _checked_flags():
    unknown = sorted(set(FLAGS.sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"--sections: unknown {','.join(unknown)}; choose from {','.join(SECTIONS)}")
    if "inference" in FLAGS.sections and not glob.glob(os.path.join(FLAGS.workdir, "checkpoints", "ckpt-*.index")):
        raise ValueError(f"--workdir={FLAGS.workdir}: no trained run with a checkpoint there (run make train "
                         f"first, or drop 'inference' from --sections)")
    return positive_ints("forward_batches", FLAGS.forward_batches), positive_ints("train_batches", FLAGS.train_batches)


def _benchmark(args):
    if args:
        cli.error("alexnet-benchmark", f"unexpected arguments: {' '.join(args)}")
        return 2
    try:
        forward_batches, train_batches = _checked_flags()
    except ValueError as e:
        cli.error("alexnet-benchmark", e)
        return 2
    cli.start_tensorflow(FLAGS)
    from alexnet_tf.bench import report, sections

    log = (lambda m: print(m, file=sys.stderr)) if FLAGS.json else print
    results = sections.measure(FLAGS.sections, forward_batches=forward_batches, train_batches=train_batches,
                               repeats=FLAGS.repeats, warmup=FLAGS.warmup, jpegs=FLAGS.jpegs, dataset=FLAGS.dataset,
                               data_dir=FLAGS.data_dir, workdir=FLAGS.workdir,
                               profile_dir=FLAGS.profile_dir, log=log)
    if FLAGS.json:
        print(json.dumps(results, indent=2))
    else:
        report.print_table(results)
    return 0


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
