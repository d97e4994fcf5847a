"""alexnet-train: train AlexNet as the paper did.

    alexnet-train                                     # the embedded dataset, about 10 minutes on 2 cores
    alexnet-train --dataset=imagenet2012 --workdir=runs/imagenet
    alexnet-train --dataset=folder:/data/flowers --preset=tiny --steps=500

Rerunning the same command resumes from the workdir's last checkpoint.
"""

import sys

from absl import flags

from alexnet_tf import recipes
from tools import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", recipes.DEFAULT_DATASET,
                    "What to train on: 'alexnet_shapes' (embedded, offline), 'imagenet2012' (TFDS, from the "
                    "official tars in <data_dir>/downloads/manual), another TFDS name, or 'folder:PATH'.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets). "
                    "Dataset statistics are stored here too.")
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs, config.json and result.json go "
                    "(default: runs/<dataset>-<preset>). Rerunning with the same workdir resumes.")
flags.DEFINE_enum("preset", "paper", ["paper", "tiny"],
                  "Model size: 'paper' (227x227, full width) or 'tiny' (67x67, 1/8 width) for smoke runs.")
flags.DEFINE_integer("batch_size", None, "Global batch size over all replicas (default: 128, the paper's; "
                     f"{recipes.EMBEDDED['batch_size']} on the embedded dataset).", lower_bound=1)
flags.DEFINE_float("epochs", None, "Epochs to train (default: 90, the paper's; "
                   f"{recipes.EMBEDDED['epochs']:g} on the embedded dataset).", lower_bound=0)
flags.DEFINE_integer("steps", None, "Train this many steps in total; overrides --epochs.", lower_bound=1)
flags.DEFINE_float("lr", None, "Initial learning rate (default: 0.01, the paper's; "
                   f"{recipes.EMBEDDED['lr']:g} on the embedded dataset).", lower_bound=0)
flags.DEFINE_integer("warmup_steps", None, "Ramp the learning rate linearly up to --lr over this many steps "
                     f"(default: 0, the paper's constant start; {recipes.EMBEDDED['warmup_steps']} on the embedded "
                     "dataset).", lower_bound=0)
flags.DEFINE_float("momentum", 0.9, "Momentum of SGD.", lower_bound=0, upper_bound=0.999)
flags.DEFINE_float("weight_decay", 5e-4, "L2 penalty weight_decay/2 * sum(w^2) over kernels (the paper's rule).",
                   lower_bound=0)
flags.DEFINE_float("dropout", 0.5, "Dropout rate after fc6 and fc7.", lower_bound=0, upper_bound=0.99)
flags.DEFINE_enum("lr_schedule", None, ["plateau", "step"],
                  "'plateau': divide the rate by 10 when validation top-1 error stops improving for --patience "
                  "evaluations (the paper's, and the default); 'step': divide by 10 every --step_epochs epochs "
                  "(the default on the embedded dataset).")
flags.DEFINE_integer("patience", 3, "Plateau schedule: evaluations without improvement before a drop.",
                     lower_bound=1)
flags.DEFINE_float("step_epochs", None, "Step schedule: epochs between drops (default: 30; "
                   f"{recipes.EMBEDDED['step_epochs']} on the embedded dataset).", lower_bound=0)
flags.DEFINE_integer("max_drops", 3, "Divide the learning rate at most this many times.", lower_bound=0)
flags.DEFINE_integer("eval_every", None, "Evaluate on the validation split every N steps (default: every epoch).",
                     lower_bound=1)
flags.DEFINE_integer("ckpt_every", None, "Checkpoint every N steps (default: at every evaluation).",
                     lower_bound=1)
flags.DEFINE_integer("log_every", 10, "Write training scalars to TensorBoard every N steps.", lower_bound=1)
flags.DEFINE_boolean("ten_crop", False, "Evaluate with the paper's 10 views (corners, centre, mirrors) averaged.")
flags.DEFINE_list("tower_devices", None, "Devices of tower a and tower b, e.g. /GPU:0,/GPU:1 (default: one "
                  "tower per GPU with two or more GPUs, else TensorFlow's placement).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "Data parallelism: 'mirrored' over this machine's devices, 'multi_worker' across machines "
                  "(configured by TF_CONFIG).")
flags.DEFINE_enum("mixed_precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Compute precision; LRN always runs in float32. mixed_float16 uses dynamic loss scaling.")
flags.DEFINE_boolean("jit", False, "Compile the train step with XLA.")
flags.DEFINE_integer("seed", 0, "Seed for initialization, dropout, shuffling and augmentation.")
flags.DEFINE_string("export_dir", "export/alexnet", "After training, export a SavedModel to <export_dir>/<version>/ "
                    "(when this run trained, or nothing was exported yet); empty to skip.")
flags.DEFINE_integer("max_eval_images", None, "Evaluate on at most this many validation images.", lower_bound=1)


def config_from_flags():
    from alexnet_tf.training import TrainConfig

    if FLAGS.tower_devices is not None and len(FLAGS.tower_devices) != 2:
        raise ValueError(f"--tower_devices needs two devices (tower a, tower b), got "
                         f"{','.join(FLAGS.tower_devices)}")
    recipe = recipes.for_dataset(FLAGS.dataset)
    return TrainConfig(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        workdir=FLAGS.workdir or f"runs/{recipes.slug(FLAGS.dataset)}-{FLAGS.preset}",
        preset=FLAGS.preset,
        batch_size=FLAGS.batch_size or recipe["batch_size"],
        epochs=FLAGS.epochs if FLAGS.epochs is not None else recipe["epochs"],
        steps=FLAGS.steps, lr=FLAGS.lr if FLAGS.lr is not None else recipe["lr"],
        warmup_steps=FLAGS.warmup_steps if FLAGS.warmup_steps is not None else recipe["warmup_steps"],
        momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay,
        dropout=FLAGS.dropout, lr_schedule=FLAGS.lr_schedule or recipe["lr_schedule"], patience=FLAGS.patience,
        step_epochs=FLAGS.step_epochs if FLAGS.step_epochs is not None else recipe["step_epochs"],
        max_drops=FLAGS.max_drops,
        eval_every=FLAGS.eval_every or recipe.get("eval_every"), ckpt_every=FLAGS.ckpt_every,
        log_every=FLAGS.log_every, ten_crop=FLAGS.ten_crop,
        tower_devices=tuple(FLAGS.tower_devices) if FLAGS.tower_devices else None,
        strategy=FLAGS.strategy, mixed_precision=FLAGS.mixed_precision, jit=FLAGS.jit, seed=FLAGS.seed,
        max_eval_images=FLAGS.max_eval_images)


def main(argv):
    if len(argv) > 1:
        print(f"alexnet-train: error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        return 2
    from alexnet_tf.data import DatasetError
    from alexnet_tf.training import NonFiniteLoss, train

    try:
        config = config_from_flags()
        try:
            config.check()
        except ValueError as e:  # "field=value: why" names the flag of the same name
            raise ValueError(f"--{e}") from None
        result = train(config)
    except (DatasetError, NonFiniteLoss) as e:
        print(f"alexnet-train: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # a bad value that only the library could check (e.g. a missing device)
        print(f"alexnet-train: error: {e}", file=sys.stderr)
        return 2
    print(f"\nvalidation accuracy: {result['validation_accuracy']:.4f} "
          f"(top-5 error {result['validation_top5_error']:.4f}) after {result['step']} steps")
    print(f"workdir: {result['workdir']}")
    print(f"checkpoint: {result['checkpoint']}")
    if FLAGS.export_dir and result["chief"]:
        from alexnet_tf import export
        if result["step"] > result["start_step"] or export.next_version(FLAGS.export_dir) == 1:
            model, run_config, names = export.load_trained(result["workdir"], result["checkpoint"])
            print(f"SavedModel: {export.export_savedmodel(model, names, run_config, FLAGS.export_dir)}")
    print(f"TensorBoard: tensorboard --logdir {result['workdir']}")
    return 0


def run():
    cli.run(main, "alexnet-train")


if __name__ == "__main__":
    run()
