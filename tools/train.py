"""alexnet-train: for now, build the paper model and print its summary."""

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_classes", 1000, "Number of classes (size of fc8).", lower_bound=1)
flags.DEFINE_integer("image_size", 227, "Input side: 227, or the paper's 224.", lower_bound=67)


def main(argv):
    del argv
    from alexnet_tf.model import build_alexnet
    build_alexnet(FLAGS.num_classes, image_size=FLAGS.image_size).summary(line_length=100)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
