"""alexnet-train: train AlexNet as the paper did.

    alexnet-train                                     # the embedded dataset, 10-20 minutes on 2 cores
    alexnet-train --dataset=imagenet2012 --workdir=runs/imagenet
    alexnet-train --dataset=folder:/data/flowers --preset=tiny --steps=500

    alexnet-train --init_from=runs/bvlc --dataset=folder:/data/mine --train_layers=fc6,fc7,fc8

Rerunning the same command resumes from the workdir's last checkpoint. Flags marked "recipe" default to
the paper's value, to the embedded dataset's recipe when training on it, or to the fine-tuning recipe with
--init_from (alexnet_tf/config.py). Every value is checked (alexnet_tf.config.TrainConfig.check) before
TensorFlow starts.
"""

from alexnet_tf import shutdown
from tools import cli, train_flags

FLAGS = cli.flag_values()
train_flags.define(FLAGS)


def main(argv):
    return cli.main("alexnet-train", FLAGS, argv, _train, __doc__)


def _train(args):
    if args:
        cli.error("alexnet-train", f"unexpected arguments: {' '.join(args)}")
        return 2
    try:
        config = train_flags.config_from(FLAGS)
        for flag in ("workdir", "export_dir"):
            cli.check_folder(flag, getattr(config, flag, None) or FLAGS[flag].value)
    except ValueError as e:
        cli.error("alexnet-train", e)
        return 2

    # A multi-worker run's SIGTERM is blocked before TensorFlow starts its threads (alexnet_tf.shutdown says why).
    with shutdown.sigterm_blocked(config.strategy == "multi_worker"):
        cli.start_tensorflow(FLAGS)
        from alexnet_tf import training

        result, _ = training.train(config)
    print(f"\nvalidation accuracy: {result['validation_accuracy']:.4f} "
          f"(top-5 error {result['validation_top5_error']:.4f}) after {result['step']} steps")
    print(f"workdir: {result['workdir']}")
    print(f"checkpoint: {result['checkpoint']}")
    if FLAGS.export_dir and result["chief"]:
        import tensorflow as tf

        from alexnet_tf import export, sources

        if result["step"] > result["start_step"] or export.next_version(FLAGS.export_dir) == 1:
            try:
                model, _, record = export.load_trained(result["workdir"], result["checkpoint"])
                print(f"SavedModel: {export.export_savedmodel(model, record, FLAGS.export_dir)}")
            except (export.ExportError, OSError, tf.errors.OpError) as e:
                return cli.fail("alexnet-train", e, f"--export_dir={FLAGS.export_dir}: the export failed "
                                f"({sources.reason(e)}); the trained checkpoint is safe in {result['checkpoint']}: "
                                f"export it later with alexnet-export --workdir={result['workdir']} --export_dir=...")
    print(f"TensorBoard: tensorboard --logdir {result['workdir']}")
    return 0


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
