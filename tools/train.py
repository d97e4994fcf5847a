"""alexnet-train: train AlexNet as the paper did.

    alexnet-train                                     # the embedded dataset, 10-20 minutes on 2 cores
    alexnet-train --dataset=imagenet2012 --workdir=runs/imagenet
    alexnet-train --dataset=folder:/data/flowers --preset=tiny --steps=500

    alexnet-train --init_from=runs/bvlc --dataset=folder:/data/mine --train_layers=fc6,fc7,fc8

Rerunning the same command resumes from the workdir's last checkpoint. Flags
marked "recipe" default to the paper's value, to the embedded dataset's recipe
when training on it, or to the fine-tuning recipe with --init_from
(alexnet_tf/config.py).
"""


from absl import flags

from alexnet_tf import config as cfg
from tools import cli

FLAGS = flags.FLAGS
D = cfg.TrainConfig  # every default below comes from here or from the recipes
E = cfg.EMBEDDED_RECIPE


def recipe_help(paper, embedded):
    return f"(recipe; paper: {paper}, embedded dataset: {embedded}, see --init_from for fine-tuning)"


flags.DEFINE_string("dataset", cfg.EMBEDDED_DATASET,
                    "What to train on: 'alexnet_shapes' (embedded, offline), 'imagenet2012' (TFDS, from the "
                    "official tars in <data_dir>/downloads/manual), another TFDS name, or 'folder:PATH'.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets). "
                    "Dataset statistics are stored here too.")
flags.DEFINE_string("workdir", None, "Where checkpoints, TensorBoard logs, config.json and result.json go "
                    "(default: runs/<dataset>-<preset>). Rerunning with the same workdir resumes.")
flags.DEFINE_enum("preset", None, list(cfg.PRESETS),
                  "Model size: 'paper' (227x227, full width) or 'tiny' (67x67, 1/8 width) for smoke runs "
                  f"(default: {D.preset}; with --init_from, the source's).")
flags.DEFINE_enum("lrn", None, ["paper", "caffe", "none"],
                  "Local response normalization: 'paper' (the paper's constants, per tower), 'caffe' (Caffe's "
                  "bvlc_alexnet: k=1, window across towers) or 'none' (default: paper; with --init_from, the "
                  "source's).")
flags.DEFINE_enum("pool", None, list(cfg.POOL_CHOICES), "Max-pooling: 'overlapping' (3x3 every 2, the paper's) "
                  "or 'non_overlapping' (2x2 every 2, its ablation) (default: overlapping; with --init_from, the "
                  "source's).")
flags.DEFINE_integer("towers", None, "2 (the paper's net) or 1 (its one-GPU comparison net: conv1-4 of one "
                     "tower's size, conv5 and the FC layers of the whole net's) (default: 2; with --init_from, "
                     "the source's).", lower_bound=1, upper_bound=2)
flags.DEFINE_enum("recipe", None, list(cfg.RECIPES),
                  "Where the paper's text and its 2012 code differ, follow 'paper' (the text) or 'original_code' "
                  "(layers-145.cfg of the code: conv3-5 init std x3, conv1 normalized before its ReLU, the code's "
                  "LRN constants, an extra same-map normalization after conv2, biases at twice the starting rate "
                  "and never lowered, and --lr_schedule=original_code unless given) (default: paper; with "
                  "--init_from, the source's).")
flags.DEFINE_boolean("pca_lighting", D.pca_lighting, "Training: the paper's PCA colour augmentation.")
flags.DEFINE_boolean("flip", D.flip, "Training: random horizontal reflections.")
flags.DEFINE_string("init_from", None, "Fine-tune: start from this workdir (alexnet-train or alexnet-import) or "
                    "checkpoint. Every layer is loaded; fc8 is initialized anew when the class count differs. "
                    "Only a fresh workdir is initialized: rerunning resumes. Uses the fine-tuning recipe "
                    f"(lr {cfg.FINETUNE_RECIPE['lr']:g}, {cfg.FINETUNE_RECIPE['epochs']:g} epochs).")
flags.DEFINE_string("train_layers", D.train_layers, "'all', or the layers to train, e.g. 'fc8' or "
                    "'fc6,fc7,fc8'; the others are frozen (no updates, no momentum, no backward pass below the "
                    f"lowest trained layer). Layers: {','.join(cfg.WEIGHT_LAYERS)}.")
flags.DEFINE_integer("batch_size", None, "Global batch size over all replicas "
                     + recipe_help(D.batch_size, E["batch_size"]), lower_bound=1)
flags.DEFINE_float("epochs", None, "Epochs to train " + recipe_help(f"{D.epochs:g}", f"{E['epochs']:g}"), lower_bound=0)
flags.DEFINE_integer("steps", None, "Train this many steps in total; overrides --epochs.", lower_bound=1)
flags.DEFINE_float("lr", None, "Initial learning rate " + recipe_help(D.lr, E["lr"]), lower_bound=0)
flags.DEFINE_integer("warmup_steps", None, "Ramp the learning rate linearly up to --lr over this many steps "
                     + recipe_help(D.warmup_steps, E["warmup_steps"]), lower_bound=0)
flags.DEFINE_float("momentum", D.momentum, "Momentum of SGD.", lower_bound=0, upper_bound=0.999)
flags.DEFINE_float("weight_decay", D.weight_decay,
                   "L2 penalty weight_decay/2 * sum(w^2) over kernels (the paper's rule).", lower_bound=0)
flags.DEFINE_float("dropout", D.dropout, "Dropout rate after fc6 and fc7.", lower_bound=0, upper_bound=0.99)
flags.DEFINE_enum("lr_schedule", None, list(cfg.SCHEDULES),
                  "'plateau': divide the rate by 10 when validation top-1 error stops improving for --patience "
                  "evaluations (the paper's); 'step': divide by 10 every --step_epochs epochs; 'original_code': "
                  "the 2012 run's calendar stretched to this run (/10 at epochs 25, 51, 79 of 90; conv1 slowed at "
                  "67 and stopped at 72; colour noise off from 67) "
                  + recipe_help(D.lr_schedule, E["lr_schedule"]))
flags.DEFINE_integer("patience", D.patience, "Plateau schedule: evaluations without improvement before a drop.",
                     lower_bound=1)
flags.DEFINE_float("step_epochs", None, "Step schedule: epochs between drops "
                   + recipe_help(f"{D.step_epochs:g}", f"{E['step_epochs']:g}"), lower_bound=0)
flags.DEFINE_integer("max_drops", D.max_drops, "Divide the learning rate at most this many times.", lower_bound=0)
flags.DEFINE_integer("eval_every", None, "Evaluate on the validation split every N steps "
                     + recipe_help("every epoch", E["eval_every"]), lower_bound=1)
flags.DEFINE_integer("ckpt_every", None, "Checkpoint every N steps (default: at every evaluation).",
                     lower_bound=1)
flags.DEFINE_integer("log_every", D.log_every, "Write training scalars to TensorBoard every N steps.", lower_bound=1)
flags.DEFINE_boolean("ten_crop", D.ten_crop, "Evaluate with the paper's 10 views (corners, centre, mirrors) averaged.")
flags.DEFINE_list("tower_devices", None, "Devices of tower a and tower b, e.g. /GPU:0,/GPU:1 (default: one "
                  "tower per GPU with two or more GPUs, else TensorFlow's placement).")
flags.DEFINE_enum("strategy", D.strategy, list(cfg.STRATEGIES),
                  "Data parallelism: 'mirrored' over this machine's devices, 'multi_worker' across machines "
                  "(configured by TF_CONFIG). multi_worker with --tower_devices is the hybrid scheme: one "
                  "replica per machine, its towers on these devices, gradients all-reduced across machines.")
flags.DEFINE_integer("cpu_devices", D.cpu_devices, "Split the host CPU into this many logical devices /CPU:0 ... "
                     "before anything else runs, to try tower placement without GPUs, e.g. --cpu_devices=2 "
                     "--tower_devices=/CPU:0,/CPU:1 (they share the same cores: for seeing placement, not speed).",
                     lower_bound=1)
flags.DEFINE_enum("mixed_precision", D.mixed_precision, list(cfg.PRECISIONS),
                  "Compute precision; LRN always runs in float32. mixed_float16 uses dynamic loss scaling.")
flags.DEFINE_boolean("jit", D.jit, "Compile the train step with XLA.")
flags.DEFINE_integer("seed", D.seed, "Seed for initialization, dropout, shuffling and augmentation.")
flags.DEFINE_string("export_dir", "export/alexnet", "After training, export a SavedModel to <export_dir>/<version>/ "
                    "(when this run trained, or nothing was exported yet); empty to skip.")
flags.DEFINE_integer("max_eval_images", D.max_eval_images, "Evaluate on at most this many validation images.",
                     lower_bound=1)
flags.DEFINE_integer("max_pixels", D.max_pixels, "Refuse (skip, with a line naming it) any image whose header "
                     "says it has more pixels than this, before decoding it: a guard against decompression bombs.",
                     lower_bound=1)

# The flags that are TrainConfig fields of the same name.
CONFIG_FLAGS = [f for f in cfg.TrainConfig.__dataclass_fields__ if f in FLAGS]


def config_from_flags():
    """The TrainConfig the flags describe, checked (before TensorFlow starts); ValueError naming a bad flag."""
    config = cfg.make_config(**{f: FLAGS[f].value for f in CONFIG_FLAGS})
    config.check()
    return config


def main(argv):
    if len(argv) > 1:
        cli.error("alexnet-train", f"unexpected arguments: {' '.join(argv[1:])}")
        return 2
    try:
        config = config_from_flags()
        for flag in ("workdir", "export_dir"):
            cli.check_folder(flag, getattr(config, flag, None) or FLAGS[flag].value)
    except ValueError as e:
        cli.error("alexnet-train", e)
        return 2

    cli.start_tensorflow()
    from alexnet_tf import cluster, export, training
    from alexnet_tf.data import DatasetError

    try:
        result, _ = training.train(config)
    except (DatasetError, training.NonFiniteLoss, cluster.ClusterError) as e:
        cli.error("alexnet-train", e)
        return 1
    except ValueError as e:  # a bad value that only the library could check (e.g. a missing device)
        cli.error("alexnet-train", e)
        return 2
    print(f"\nvalidation accuracy: {result['validation_accuracy']:.4f} "
          f"(top-5 error {result['validation_top5_error']:.4f}) after {result['step']} steps")
    print(f"workdir: {result['workdir']}")
    print(f"checkpoint: {result['checkpoint']}")
    if FLAGS.export_dir and result["chief"]:
        if result["step"] > result["start_step"] or export.next_version(FLAGS.export_dir) == 1:
            try:
                model, run_config, names = export.load_trained(result["workdir"], result["checkpoint"])
                print(f"SavedModel: {export.export_savedmodel(model, names, run_config, FLAGS.export_dir)}")
            except export.ExportError as e:
                cli.error("alexnet-train", e)
                return 1
    print(f"TensorBoard: tensorboard --logdir {result['workdir']}")
    return 0


def run():
    cli.run(main, "alexnet-train")


if __name__ == "__main__":
    run()
