"""alexnet-study: train variants of the paper's net side by side and compare them with the paper's claims.

    alexnet-study --variants=paper,no_lrn,non_overlapping_pool,one_tower --steps=2000
    alexnet-study --variants=paper,no_pca_lighting --dataset=folder:/data/x --preset=tiny --steps=500

Every variant trains with alexnet-train's flags (below), the same seed, data order and budget, in its own
workdir under --workdir; rerunning resumes each. The study writes study.md (final validation errors,
parameters, images/s, the difference from `paper` next to the paper's reported one) and study.png
(validation error against step). Compare runs in TensorBoard: tensorboard --logdir <workdir>.
"""

from pathlib import Path

from absl import flags

from alexnet_tf import config as cfg
from alexnet_tf.study import VARIANTS
from tools import cli
from tools import train_flags  # alexnet-train's flags, applied to every variant

FLAGS = cli.flag_values()
train_flags.define(FLAGS)
flags.DEFINE_list("variants", ["paper", "no_lrn", "non_overlapping_pool", "one_tower"],
                  f"The variants to train, in order, any of {','.join(VARIANTS)} (alexnet_tf/study.py). "
                  "--workdir is the study's folder (default: runs/study-<dataset>-<preset>): each variant "
                  "trains in <workdir>/<variant>, and study.md and study.png go beside them.", flag_values=FLAGS)


def main(argv):
    return cli.main("alexnet-study", FLAGS, argv, _study, __doc__)


def _study(args):
    if args:
        cli.error("alexnet-study", f"unexpected arguments: {' '.join(args)}")
        return 2
    unknown = [v for v in FLAGS.variants if v not in VARIANTS]
    try:
        if unknown or not FLAGS.variants:
            raise ValueError(f"variants={','.join(FLAGS.variants)}: choose from {','.join(VARIANTS)}")
        base = train_flags.config_from(FLAGS)
        root = FLAGS.workdir or f"runs/study-{cfg.slug(base.dataset)}-{base.model.preset}"
        cli.check_folder("workdir", root)
    except ValueError as e:
        cli.error("alexnet-study", e)
        return 2

    cli.start_tensorflow(FLAGS)
    from alexnet_tf import study

    rows = study.run_study(base, FLAGS.variants, root)  # errors and stops: cli.EXIT_STATUS
    print()
    print((Path(root) / "study.md").read_text())
    print(f"table: {root}/study.md\nplot: {root}/study.png\nTensorBoard: tensorboard --logdir {root}")
    return 0 if rows else 1


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
