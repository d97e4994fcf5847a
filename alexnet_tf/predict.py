"""Classify images with an exported model (a SavedModel directory or a .tflite file), write their fc7
features, and retrieve neighbours by those features as in the paper's Figure 4. Used by tools/predict.py.

Images stream through in batches (`read_items`, `batched`): each file is read and decoded once
(`images.read_rgb`: the header check reads only the header), every view the model needs is cut from that
one decode, and nothing but the current batch is held. Features go to disk as they come (`FeatureFile`);
neighbours are kept as each query's best candidates so far (`Neighbours`). So memory stays flat whatever
the number of images.
"""

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from alexnet_tf import images as images_lib, preprocessing
from alexnet_tf.config import MAX_PIXELS
from alexnet_tf.sidecar import Preprocessing


class PredictError(ValueError):
    """A model path, an input or an option that cannot be used; the message says which."""


class Classifier:
    """Loads what alexnet-export writes: a SavedModel, or a .tflite or .onnx file with its .json sidecar."""

    def __init__(self, path):
        path = Path(path)
        self.path, self._saved, self._interpreter, self._onnx = path, None, None, None
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise PredictError(f"model={path}: not a SavedModel directory (no saved_model.pb)")
            meta = _read(path, path / "assets" / "alexnet_tf.json")  # first: it says what the model expects
            self.preprocessing = _metadata(path, path / "assets" / "alexnet_tf.json", meta,
                                           class_names=_read(path, path / "assets" / "classes.txt").splitlines())
            try:
                self._saved = tf.saved_model.load(str(path))
            except Exception as e:  # noqa: BLE001  truncated variables, a foreign graph, ...: TF raises many types
                raise PredictError(f"model={path}: the SavedModel cannot be loaded ({_first_line(e)})") from None
            if not {"preprocessed", "features"} <= set(self._saved.signatures):
                raise PredictError(f"model={path}: not a SavedModel written by alexnet-export (it has no "
                                   f"'preprocessed' and 'features' signatures)")
        elif path.suffix == ".onnx" and path.is_file():
            self.preprocessing = _metadata(path, Path(str(path) + ".json"))
            try:
                import onnxruntime
            except ImportError:
                raise PredictError(f"model={path}: ONNX models need onnxruntime: pip install "
                                   f"'alexnet_tf[onnx]'") from None
            try:
                self._onnx = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001  onnxruntime raises its own types for files it cannot read
                raise PredictError(f"model={path}: not a readable ONNX model ({_first_line(e)})") from None
        elif path.suffix == ".tflite" and path.is_file():
            self.preprocessing = _metadata(path, Path(str(path) + ".json"))
            from ai_edge_litert.interpreter import Interpreter
            try:
                # TFLite's default is one thread; the SavedModel uses every core.
                self._interpreter = Interpreter(model_path=str(path), num_threads=len(os.sched_getaffinity(0)))
                self._interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise PredictError(f"model={path}: not a readable TFLite model ({_first_line(e)})") from None
        else:
            raise PredictError(f"model={path}: no such SavedModel directory, .tflite or .onnx file")
        if not self.preprocessing.class_names:
            raise PredictError(f"model={path}: its metadata names no classes")

    @property
    def class_names(self):
        return self.preprocessing.class_names

    @property
    def has_features(self):
        return self._saved is not None

    def probabilities(self, images):
        """[N, C] class probabilities of preprocessed float32 images [N, S, S, 3]."""
        images = np.asarray(images, np.float32)
        if self._saved is not None:
            return self._saved.signatures["preprocessed"](images=tf.constant(images))["probabilities"].numpy()
        if self._onnx is not None:
            return self._onnx.run(["probabilities"], {"images": images})[0]
        rows = []
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        for image in images:  # the converted model takes one image at a time
            self._interpreter.set_tensor(inp["index"], image[None])
            self._interpreter.invoke()
            rows.append(self._interpreter.get_tensor(out["index"])[0])
        return tf.nn.softmax(np.stack(rows).astype(np.float32)).numpy()

    def features(self, images):
        """[N, D] fc7 features of preprocessed (centre-crop) float32 images (D = 4096 for the paper model)."""
        if self._saved is None:
            raise PredictError("fc7 features need the SavedModel (the TFLite models output class scores only)")
        return self._saved.signatures["features"](images=tf.constant(np.asarray(images, np.float32)))["fc7"].numpy()

    @property
    def feature_size(self):
        return int(self._saved.signatures["features"].structured_outputs["fc7"].shape[-1])


def _first_line(error):
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0][:200]


def _read(model, path):
    try:
        return path.read_text()
    except OSError:
        raise PredictError(f"model={model}: missing {path.relative_to(model) if path.is_relative_to(model) else path} "
                           f"(not written by alexnet-export, or incomplete)") from None


def _metadata(model, path, text=None, class_names=None):
    """The Preprocessing alexnet-export writes beside a model (assets/alexnet_tf.json or the .tflite's .json
    sidecar; `text`: its content, if already read)."""
    try:
        meta = json.loads(text if text is not None else _read(model, path))
        return Preprocessing.from_json(meta, class_names)
    except ValueError as e:
        raise PredictError(f"model={model}: {path.name} is not valid JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise PredictError(f"model={model}: {path.name} lacks {e} (not written by alexnet-export)") from None


def list_images(paths):
    """Files named on the command line, and the image files inside named folders, in order."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in images_lib.IMAGE_EXTENSIONS)
        else:
            found.append(p)  # even if missing: it is reported by name
    return found


def printable(path):
    """A path on one line: control characters (a newline in a file name) written as escapes."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], str(path))


# ----------------------------------------------------------------------------
# Images, one decode each, in batches
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Item:
    """One readable image: the views the model classifies ([S, S, 3], or [10, S, S, 3] with ten_crop), the
    centre crop features are taken from, and a small uint8 picture of it for a contact sheet."""
    path: Path
    views: np.ndarray
    centre: np.ndarray
    thumbnail: np.ndarray | None = None


def read_items(record, paths, *, ten_crop=False, thumbnail=None, on_error=print, max_pixels=MAX_PIXELS):
    """Yields an `Item` for each readable image of `paths`, as `record` (a Preprocessing) prepares it, each
    file decoded once; each failure is reported by name through `on_error`."""
    cut = _views(record.image_size, record.resize, tuple(record.mean), ten_crop, thumbnail)
    for path in paths:
        image, why = images_lib.read_rgb(path, max_pixels)
        if image is None:
            on_error(f"{printable(path)}: {why}")
            continue
        views, centre, small = (t.numpy() for t in cut(image))
        yield Item(Path(path), views, centre, small if thumbnail else None)


def _views(crop, resize, mean, ten_crop, thumbnail):
    """A tf.function from one decoded uint8 image to (its views, its centre crop, its thumbnail)."""
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def cut(image):
        square = preprocessing.center_square(image, resize)
        centre = preprocessing.eval_view(square, crop=crop, mean=mean)
        views = preprocessing.eval_view(square, crop=crop, mean=mean, ten_crop=True) if ten_crop else centre
        small = tf.cast(tf.image.resize(square, (thumbnail or 1, thumbnail or 1)), tf.uint8)
        return views, centre, small

    return cut


def batched(items, size):
    """Lists of up to `size` of `items` (any iterable), in order."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def classify(classifier, batch, ten_crop=False):
    """[(path, [(name, probability)] * 5)] for a batch of Items. A model whose probabilities are not finite
    (NaN or infinite weights) is an error, not a result."""
    views = np.stack([item.views for item in batch])
    if ten_crop:  # [n, 10, s, s, 3]: average the ten views' softmax, as the paper does
        probs = classifier.probabilities(views.reshape(-1, *views.shape[2:])).reshape(len(batch), 10, -1).mean(1)
    else:
        probs = classifier.probabilities(views)
    if not np.isfinite(probs).all():
        raise PredictError(f"model={classifier.path}: gives non-finite probabilities (NaN or inf) for "
                           f"{printable(batch[0].path)}; its weights are broken, re-export it from a good checkpoint")
    top = np.argsort(-probs, axis=1)[:, :5]
    return [(item.path, [(classifier.class_names[k], float(p[k])) for k in ks]) for item, p, ks in zip(batch, probs, top)]


def features(classifier, batch):
    """[len(batch), D] fc7 features of a batch of Items' centre crops."""
    return classifier.features(np.stack([item.centre for item in batch]))


# ----------------------------------------------------------------------------
# Features on disk, neighbours in a streamed gallery, contact sheets
# ----------------------------------------------------------------------------

class FeatureFile:
    """A float32 .npy of [rows, width] written a batch at a time, at exactly `path`. Room is claimed for
    `max_rows` (every listed file); `close` writes the header for the rows that came (images that failed
    leave none)."""

    def __init__(self, path, max_rows, width):
        self.path, self.width, self.rows = Path(path), width, 0
        self._header = self._header_for(max_rows)
        self._file = open(self.path, "wb")
        self._file.write(self._header)

    def _header_for(self, rows):
        import io

        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (rows, self.width)})
        return buffer.getvalue()

    def write(self, rows):
        self._file.write(np.ascontiguousarray(rows, "<f4").tobytes())
        self.rows += len(rows)

    def close(self):
        header = self._header_for(self.rows)
        if len(header) == len(self._header):
            self._file.seek(0)
            self._file.write(header)
            self._file.close()
            return
        # The shorter shape crossed numpy's 64-byte header boundary: copy the rows under the new header.
        self._file.close()
        tmp = self.path.with_name(self.path.name + ".partial")
        with open(self.path, "rb") as old, open(tmp, "wb") as new:
            old.seek(len(self._header))
            new.write(header)
            while chunk := old.read(1 << 24):
                new.write(chunk)
        os.replace(tmp, self.path)


def nearest(query_features, gallery_features, k):
    """Indices [Q, k] of each query's k nearest gallery rows by Euclidean distance, and the distances."""
    d2 = (np.sum(query_features ** 2, 1)[:, None] + np.sum(gallery_features ** 2, 1)[None, :]
          - 2 * query_features @ gallery_features.T)
    k = min(k, gallery_features.shape[0])
    order = np.argsort(d2, axis=1)[:, :k]
    return order, np.sqrt(np.maximum(np.take_along_axis(d2, order, 1), 0))


class Neighbours:
    """Each query's `k` nearest gallery images so far, updated a gallery batch at a time: what is held is
    the queries' features and k candidates (path, distance, thumbnail) per query."""

    def __init__(self, query_features, k):
        self.query, self.k = np.asarray(query_features, np.float32), k
        self.best = [[] for _ in range(len(self.query))]

    def add(self, batch, gallery_features):
        order, dist = nearest(self.query, gallery_features, self.k)
        for best, idx, d in zip(self.best, order, dist):
            best += [(float(x), batch[i].path, batch[i].thumbnail) for i, x in zip(idx, d)]
            best.sort(key=lambda c: c[0])
            del best[self.k:]

    def found(self):
        """Per query: [(gallery path, distance, thumbnail)], nearest first."""
        return [[(path, x, thumb) for x, path, thumb in best] for best in self.best]


def search_gallery(classifier, query_features, gallery, k, *, batch_size=32, thumbnail=None, on_error=print,
                   max_pixels=MAX_PIXELS):
    """`Neighbours` of the queries among the images of the `gallery` folder by fc7 distance (the paper's
    Figure 4), the gallery streamed in batches like the queries."""
    if not Path(gallery).is_dir():
        raise PredictError(f"gallery={gallery}: no such folder")
    found = Neighbours(query_features, k)
    items = read_items(classifier.preprocessing, list_images([gallery]), thumbnail=thumbnail, on_error=on_error,
                       max_pixels=max_pixels)
    for batch in batched(items, batch_size):
        found.add(batch, features(classifier, batch))
    if not found.best or not found.best[0]:
        raise PredictError(f"gallery={gallery}: no usable images found under it")
    return found


def contact_sheet(rows, path):
    """A PNG with one row per query: its thumbnail, then its neighbours' (uint8 [t, t, 3] arrays)."""
    thumb = rows[0][0].shape[0]
    width = max(len(r) for r in rows)
    blank = np.zeros((thumb, thumb, 3), np.uint8)
    sheet = np.concatenate([np.concatenate(list(r) + [blank] * (width - len(r)), axis=1) for r in rows], axis=0)
    Path(path).write_bytes(tf.io.encode_png(sheet).numpy())
