"""alexnet-predict: top-5 classes of images, with an exported SavedModel or .tflite file.

    alexnet-predict --model=export/alexnet/1 photo.jpg more_photos/
    alexnet-predict --model=export/alexnet/alexnet_v1_int8.tflite --json photo.jpg
    alexnet-predict --model=export/alexnet/1 --features=fc7.npy photos/
    alexnet-predict --model=export/alexnet/1 --neighbors=5 --gallery=photos/ --contact_sheet=nn.png queries/

Images stream through in batches of --batch_size: results are printed (one line, or one JSON object, per
image) as each batch is done, and memory stays flat however many images there are. A missing, corrupt or
non-image file is reported on one line naming it; the others are still predicted, and the exit status is 1
if any failed.
"""

import json
import sys
from pathlib import Path

from absl import flags

from alexnet_tf.config import MAX_PIXELS
from tools import cli

FLAGS = cli.flag_values()
flags.DEFINE_string("model", None, "A SavedModel version directory or a .tflite file from alexnet-export.",
                    required=True, flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Images per model call (and held in memory at once).", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_boolean("ten_crop", False, "Average the paper's 10 views (corners, centre, mirrors).", flag_values=FLAGS)
flags.DEFINE_boolean("json", False, "One JSON object per image instead of text (notes go to stderr).",
                     flag_values=FLAGS)
flags.DEFINE_string("features", None, "Write the images' fc7 features ([N, 4096] float32) to this .npy file, "
                    "exactly this path, as they come (SavedModel only); rows in the order the images are listed.",
                    flag_values=FLAGS)
flags.DEFINE_integer("neighbors", None, "List each image's K nearest --gallery images by fc7 distance.",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("gallery", None, "Folder of images to search with --neighbors.", flag_values=FLAGS)
flags.DEFINE_string("contact_sheet", None, "With --neighbors: write a PNG, one row per query and its neighbours.",
                    flag_values=FLAGS)
flags.DEFINE_integer("max_pixels", MAX_PIXELS, "Refuse any image whose header says it has more pixels than this, "
                     "before decoding it (a guard against decompression bombs).", lower_bound=1, flag_values=FLAGS)


def main(argv):
    return cli.main("alexnet-predict", FLAGS, argv, _predict, __doc__)


def _refused(message):
    cli.error("alexnet-predict", message)
    return 2


def _predict(inputs):
    if not inputs:
        return _refused("name at least one image file or folder")
    if (FLAGS.neighbors is None) != (FLAGS.gallery is None):
        return _refused("--neighbors and --gallery go together")
    for flag in ("features", "contact_sheet"):
        if FLAGS[flag].value and Path(FLAGS[flag].value).is_dir():
            return _refused(f"--{flag}={FLAGS[flag].value}: is a folder; name the file to write")
    cli.start_tensorflow(FLAGS)
    from alexnet_tf import predict

    failures = []

    def report(message):
        failures.append(message)
        print(f"alexnet-predict: error: {message}", file=sys.stderr)

    note = (lambda text: print(text, file=sys.stderr)) if FLAGS.json else print
    # PredictError (2), an output that cannot be written (OSError, 1): cli.EXIT_STATUS.
    classifier = predict.Classifier(FLAGS.model)
    if (FLAGS.features or FLAGS.neighbors) and not classifier.has_features:
        raise predict.PredictError(f"model={FLAGS.model}: fc7 features (--features, --neighbors) need the "
                                   f"SavedModel; the TFLite models output class scores only")
    files = predict.list_images(inputs)
    if not files:
        cli.error("alexnet-predict", f"no images found under {', '.join(inputs)}")
        return 1
    for flag, output in (("features", FLAGS.features), ("contact_sheet", FLAGS.contact_sheet)):
        if output and Path(output).is_dir():
            raise predict.PredictError(f"{flag}={output}: is a folder; give the file to write")
        if output:  # into a folder that does not exist yet: create it
            Path(output).expanduser().parent.mkdir(parents=True, exist_ok=True)
    queries = _classify(predict, classifier, files, report, note)
    if FLAGS.neighbors:
        _neighbours(predict, classifier, queries, report)
    return 1 if failures else 0


def _classify(predict, classifier, files, report, note):
    """Prints each image's top 5 a batch at a time, writes --features as they come; returns the queries'
    (paths, features, thumbnails) when --neighbors needs them."""
    thumbnail = 96 if FLAGS.contact_sheet else None
    items = predict.read_items(classifier.preprocessing, files, ten_crop=FLAGS.ten_crop, thumbnail=thumbnail,
                               on_error=report, max_pixels=FLAGS.max_pixels)
    feature_file = predict.FeatureFile(FLAGS.features, len(files), classifier.feature_size) if FLAGS.features else None
    queries = ([], [], [])
    try:
        for batch in predict.batched(items, FLAGS.batch_size):
            for path, top5 in predict.classify(classifier, batch, ten_crop=FLAGS.ten_crop):
                if FLAGS.json:
                    print(json.dumps({"file": str(path), "top5": [{"class": n, "probability": p} for n, p in top5]}))
                else:
                    print(f"{predict.printable(path)}: " + "; ".join(f"{n} {p:.3f}" for n, p in top5))
            sys.stdout.flush()
            if feature_file or FLAGS.neighbors:
                rows = predict.features(classifier, batch)
                if feature_file:
                    feature_file.write(rows)
                if FLAGS.neighbors:
                    for store, values in zip(queries, ([i.path for i in batch], rows, [i.thumbnail for i in batch])):
                        store.extend(values)
    finally:
        if feature_file:
            feature_file.close()
    if feature_file:
        note(f"fc7 features of {feature_file.rows} images -> {FLAGS.features} (rows in the order listed above)")
    return queries


def _neighbours(predict, classifier, queries, report):
    import numpy as np

    paths, features, thumbnails = queries
    if not paths:
        return
    found = predict.search_gallery(classifier, np.stack(features), FLAGS.gallery, FLAGS.neighbors,
                                   batch_size=FLAGS.batch_size, thumbnail=96 if FLAGS.contact_sheet else None,
                                   on_error=report, max_pixels=FLAGS.max_pixels).found()
    for path, near in zip(paths, found):
        if FLAGS.json:
            print(json.dumps({"file": str(path), "neighbors": [{"file": str(f), "distance": x} for f, x, _ in near]}))
        else:
            print(f"{predict.printable(path)} nearest: "
                  + "; ".join(f"{predict.printable(f)} {x:.2f}" for f, x, _ in near))
    if FLAGS.contact_sheet:
        predict.contact_sheet([[thumb] + [t for _, _, t in near] for thumb, near in zip(thumbnails, found)],
                              FLAGS.contact_sheet)
        (print if not FLAGS.json else lambda t: print(t, file=sys.stderr))(f"contact sheet -> {FLAGS.contact_sheet}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
