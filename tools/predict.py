"""alexnet-predict: top-5 classes of images, with an exported SavedModel or .tflite file.

    alexnet-predict --model=export/alexnet/1 photo.jpg more_photos/
    alexnet-predict --model=export/alexnet/alexnet_v1_int8.tflite --json photo.jpg
    alexnet-predict --model=export/alexnet/1 --features=fc7.npy photos/
    alexnet-predict --model=export/alexnet/1 --neighbors=5 --gallery=photos/ --contact_sheet=nn.png queries/

A missing, corrupt or non-image file is reported on one line naming it; the
others are still predicted, and the exit status is 1 if any failed.
"""

import json
import sys
from pathlib import Path

import numpy as np
from absl import flags

from alexnet_tf.config import MAX_PIXELS
from tools import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A SavedModel version directory or a .tflite file from alexnet-export.",
                    required=True)
flags.DEFINE_integer("batch_size", 32, "Images per model call.", lower_bound=1)
flags.DEFINE_boolean("ten_crop", False, "Average the paper's 10 views (corners, centre, mirrors).")
flags.DEFINE_boolean("json", False, "One JSON object per image instead of text.")
flags.DEFINE_string("features", None, "Write the images' fc7 features ([N, 4096] float32) to this .npy file "
                    "(SavedModel only); the file order is printed.")
flags.DEFINE_integer("neighbors", None, "List each image's K nearest --gallery images by fc7 distance.",
                     lower_bound=1)
flags.DEFINE_string("gallery", None, "Folder of images to search with --neighbors.")
flags.DEFINE_string("contact_sheet", None, "With --neighbors: write a PNG, one row per query and its neighbours.")
flags.DEFINE_integer("max_pixels", MAX_PIXELS, "Refuse any image whose header says it has more pixels than this, "
                     "before decoding it (a guard against decompression bombs).", lower_bound=1)


def main(argv):
    inputs = argv[1:]
    if not inputs:
        print("alexnet-predict: error: name at least one image file or folder", file=sys.stderr)
        return 2
    if (FLAGS.neighbors is None) != (FLAGS.gallery is None):
        print("alexnet-predict: error: --neighbors and --gallery go together", file=sys.stderr)
        return 2
    cli.start_tensorflow()
    from alexnet_tf import predict

    failures = []

    def report(message):
        failures.append(message)
        print(f"alexnet-predict: error: {message}", file=sys.stderr)

    try:
        classifier = predict.Classifier(FLAGS.model)
    except predict.PredictError as e:
        cli.error("alexnet-predict", e)
        return 2
    files = predict.list_images(inputs)
    if not files:
        cli.error("alexnet-predict", f"no images found under {', '.join(inputs)}")
        return 1
    items = predict.load_images(classifier, files, ten_crop=FLAGS.ten_crop, on_error=report,
                                max_pixels=FLAGS.max_pixels)
    for path, top5 in predict.classify(classifier, items, FLAGS.batch_size, ten_crop=FLAGS.ten_crop):
        if FLAGS.json:
            print(json.dumps({"file": str(path), "top5": [{"class": n, "probability": p} for n, p in top5]}))
        else:
            print(f"{path}: " + "; ".join(f"{n} {p:.3f}" for n, p in top5))

    try:
        for output in (FLAGS.features, FLAGS.contact_sheet):
            if output:  # into a folder that does not exist yet: create it
                Path(output).expanduser().parent.mkdir(parents=True, exist_ok=True)
        if FLAGS.features or FLAGS.neighbors:
            plain = items if not FLAGS.ten_crop else predict.load_images(classifier, [p for p, _ in items])
            query = predict.features(classifier, plain, FLAGS.batch_size)
            if FLAGS.features:
                np.save(FLAGS.features, query)
                print(f"fc7 features of {len(plain)} images -> {FLAGS.features} (rows in the order listed above)")
            if FLAGS.neighbors:
                rows = []
                for path, found in predict.search_gallery(classifier, [p for p, _ in plain], query, FLAGS.gallery,
                                                          FLAGS.neighbors, FLAGS.batch_size, on_error=report):
                    rows.append([path] + [f for f, _ in found])
                    if FLAGS.json:
                        print(json.dumps({"file": str(path), "neighbors": [{"file": f, "distance": x}
                                                                          for f, x in found]}))
                    else:
                        print(f"{path} nearest: " + "; ".join(f"{f} {x:.2f}" for f, x in found))
                if FLAGS.contact_sheet:
                    predict.contact_sheet(rows, FLAGS.contact_sheet)
                    print(f"contact sheet -> {FLAGS.contact_sheet}")
    except (predict.PredictError, OSError) as e:
        cli.error("alexnet-predict", e)
        return 2
    return 1 if failures else 0


def run():
    cli.run(main, "alexnet-predict")


if __name__ == "__main__":
    run()
