"""alexnet-import: Caffe's trained bvlc_alexnet into a workdir, from the ONNX model zoo or caffe-tensorflow.

    alexnet-import --weights=bvlcalexnet-12.onnx --workdir=runs/bvlc_alexnet
    alexnet-import --weights=bvlc_alexnet.npy --workdir=runs/bvlc_alexnet

The workdir then works like a trained one: alexnet-export, alexnet-predict on the export, and
alexnet-train --init_from=runs/bvlc_alexnet to fine-tune. A .npy file is a Python pickle: load only files
from a source you trust (this reader refuses any pickle that holds more than numpy arrays).
"""

from absl import flags

from tools import cli

FLAGS = cli.flag_values()
flags.DEFINE_string("weights", None, "bvlcalexnet-*.onnx (ONNX model zoo) or bvlc_alexnet.npy (caffe-tensorflow).",
                    required=True, flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "A new (or empty) folder to write the imported model to.", required=True,
                    flag_values=FLAGS)


def main(argv):
    return cli.main("alexnet-import", FLAGS, argv, _import, __doc__)


def _import(args):
    if args:
        cli.error("alexnet-import", f"unexpected arguments: {' '.join(args)}")
        return 2
    cli.start_tensorflow(FLAGS)
    from alexnet_tf import pretrained

    workdir = pretrained.import_weights(FLAGS.weights, FLAGS.workdir)  # errors: cli.EXIT_STATUS
    print(f"workdir: {workdir}")
    print(f"next: alexnet-export --workdir={workdir}, or alexnet-train --init_from={workdir} --dataset=...")
    return 0


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
