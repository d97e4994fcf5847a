"""Classify images with an exported model (SavedModel directory or .tflite file), and retrieve
neighbours by fc7 features as in the paper's Figure 4. Used by tools/predict.py."""

import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from alexnet_tf import folders, preprocessing


class PredictError(ValueError):
    """A model path or option that cannot be used."""


class Classifier:
    """Loads a SavedModel (from alexnet-export) or a .tflite file with its .json sidecar."""

    def __init__(self, path):
        path = Path(path)
        self._saved = self._interpreter = None
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise PredictError(f"model={path}: not a SavedModel directory (no saved_model.pb)")
            meta = _metadata(path, path / "assets" / "alexnet_tf.json")
            self.class_names = _read(path, path / "assets" / "classes.txt").splitlines()
            try:
                self._saved = tf.saved_model.load(str(path))
            except Exception as e:  # noqa: BLE001  truncated variables, a foreign graph, ...: TF raises many types
                raise PredictError(f"model={path}: the SavedModel cannot be loaded ({_first_line(e)})") from None
            if not {"preprocessed", "features"} <= set(self._saved.signatures):
                raise PredictError(f"model={path}: not a SavedModel written by alexnet-export (it has no "
                                   f"'preprocessed' and 'features' signatures)")
        elif path.suffix == ".tflite" and path.is_file():
            meta = _metadata(path, Path(str(path) + ".json"))
            self.class_names = meta.get("class_names")
            from ai_edge_litert.interpreter import Interpreter
            try:
                # TFLite's default is one thread; the SavedModel uses every core.
                self._interpreter = Interpreter(model_path=str(path), num_threads=len(os.sched_getaffinity(0)))
                self._interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise PredictError(f"model={path}: not a readable TFLite model ({_first_line(e)})") from None
        else:
            raise PredictError(f"model={path}: no such SavedModel directory or .tflite file")
        if not isinstance(self.class_names, list) or not self.class_names:
            raise PredictError(f"model={path}: its metadata names no classes")
        self.image_size, self.resize, self.mean = meta["image_size"], meta["resize"], meta["mean"]

    @property
    def has_features(self):
        return self._saved is not None

    def preprocess(self, image_bytes, ten_crop=False):
        return preprocessing.eval_view(tf.constant(image_bytes), crop=self.image_size, resize=self.resize,
                                       mean=self.mean, ten_crop=ten_crop).numpy()

    def probabilities(self, images):
        """[N, C] class probabilities of preprocessed float32 images [N, S, S, 3]."""
        images = np.asarray(images, np.float32)
        if self._saved is not None:
            return self._saved.signatures["preprocessed"](images=tf.constant(images))["probabilities"].numpy()
        rows = []
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        for image in images:  # the converted model takes one image at a time
            self._interpreter.set_tensor(inp["index"], image[None])
            self._interpreter.invoke()
            rows.append(self._interpreter.get_tensor(out["index"])[0])
        return tf.nn.softmax(np.stack(rows).astype(np.float32)).numpy()

    def features(self, images):
        if self._saved is None:
            raise PredictError("fc7 features need the SavedModel (the TFLite models output class scores only)")
        return self._saved.signatures["features"](images=tf.constant(np.asarray(images, np.float32)))["fc7"].numpy()


def _first_line(error):
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0][:200]


def _read(model, path):
    try:
        return path.read_text()
    except OSError:
        raise PredictError(f"model={model}: missing {path.relative_to(model) if path.is_relative_to(model) else path} "
                           f"(not written by alexnet-export, or incomplete)") from None


def _metadata(model, path):
    """The preprocessing constants alexnet-export writes beside a model (assets/alexnet_tf.json or the
    .tflite's .json sidecar)."""
    try:
        meta = json.loads(_read(model, path))
    except ValueError as e:
        raise PredictError(f"model={model}: {path.name} is not valid JSON ({e})") from None
    missing = [k for k in ("image_size", "resize", "mean") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise PredictError(f"model={model}: {path.name} lacks {', '.join(missing)} (not written by alexnet-export)")
    return meta


def list_images(paths):
    """Files named on the command line, and the image files inside named folders, in order."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in folders.IMAGE_EXTENSIONS)
        else:
            found.append(p)  # even if missing: it is reported by name
    return found


def load_images(classifier, paths, ten_crop=False, on_error=print, max_pixels=folders.MAX_PIXELS):
    """[(path, preprocessed array)] for the readable images; each failure reported by name via on_error."""
    good = []
    for path in paths:
        ok, note = folders.check_image(path, max_pixels)
        if not ok:
            on_error(f"{path}: {note}")
            continue
        good.append((path, classifier.preprocess(Path(path).read_bytes(), ten_crop=ten_crop)))
    return good


def classify(classifier, items, batch_size=32, ten_crop=False):
    """[(path, [(name, probability)] * 5)] for preprocessed items."""
    results = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        arrays = np.stack([a for _, a in chunk])
        if ten_crop:  # [n, 10, s, s, 3]: average the ten views' softmax, as the paper does
            probs = classifier.probabilities(arrays.reshape(-1, *arrays.shape[2:])).reshape(len(chunk), 10, -1)
            probs = probs.mean(axis=1)
        else:
            probs = classifier.probabilities(arrays)
        for (path, _), p in zip(chunk, probs):
            top = np.argsort(-p)[:5]
            results.append((path, [(classifier.class_names[k], float(p[k])) for k in top]))
    return results


def features(classifier, items, batch_size=32):
    """[N, D] fc7 features of preprocessed (centre-crop) items (D = 4096 for the paper model)."""
    out = [classifier.features(np.stack([a for _, a in items[i:i + batch_size]]))
           for i in range(0, len(items), batch_size)]
    if out:
        return np.concatenate(out)
    return classifier.features(np.zeros((1, classifier.image_size, classifier.image_size, 3), np.float32))[:0]


def nearest(query_features, gallery_features, k):
    """Indices [Q, k] of each query's k nearest gallery rows by Euclidean distance, and the distances."""
    d2 = (np.sum(query_features ** 2, 1)[:, None] + np.sum(gallery_features ** 2, 1)[None, :]
          - 2 * query_features @ gallery_features.T)
    order = np.argsort(d2, axis=1)[:, :k]
    return order, np.sqrt(np.maximum(np.take_along_axis(d2, order, 1), 0))


def search_gallery(classifier, query_paths, query_features, gallery, k, batch_size=32, on_error=print):
    """[(query path, [(gallery file, distance)] * k)]: each query's k nearest images of the `gallery`
    folder by fc7 distance (the paper's Figure 4)."""
    if not Path(gallery).is_dir():
        raise PredictError(f"gallery={gallery}: no such folder")
    items = load_images(classifier, list_images([gallery]), on_error=on_error)
    if not items:
        raise PredictError(f"gallery={gallery}: no usable images found under it")
    order, dist = nearest(query_features, features(classifier, items, batch_size), k)
    return [(path, [(str(items[i][0]), float(x)) for i, x in zip(idx, d)])
            for path, idx, d in zip(query_paths, order, dist)]


def contact_sheet(rows, path, thumb=96):
    """A PNG with one row per query: the query image, then its neighbours."""
    def tile(file):
        image = preprocessing.decode_center_256(tf.constant(Path(file).read_bytes()))
        return tf.cast(tf.image.resize(image, (thumb, thumb)), tf.uint8)

    width = max(len(r) for r in rows)
    blank = tf.zeros((thumb, thumb, 3), tf.uint8)
    lines = [tf.concat([tile(f) for f in r] + [blank] * (width - len(r)), axis=1) for r in rows]
    Path(path).write_bytes(tf.io.encode_png(tf.concat(lines, axis=0)).numpy())
