import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import data, folders, pipelines, preprocessing, statistics
from alexnet_tf.config import EMBEDDED_DATASET
from alexnet_tf.sources import DatasetError



def random_rgb(seed, size=(60, 80)):
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


def save(path, array, fmt="JPEG", mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


@pytest.fixture
def messy_folder(tmp_path):
    """Two classes of good JPEGs, plus one of each kind of bad file found in real collections."""
    root = tmp_path / "messy"
    for c, name in enumerate(("cat", "dog")):
        for i in range(6):
            save(root / name / f"{name}_{i}.JPEG", random_rgb(10 * c + i))
    good = (root / "cat" / "cat_0.JPEG").read_bytes()
    converted = {
        save(root / "cat" / "cmyk.JPEG", random_rgb(50), mode="CMYK"): "CMYK JPEG converted to RGB",
        save(root / "dog" / "gray.JPEG", random_rgb(51), mode="L"): "grayscale converted to RGB",
        save(root / "dog" / "png_named.JPEG", random_rgb(52), fmt="PNG"): "not a JPEG despite its name",
    }
    (root / "cat" / "truncated.JPEG").write_bytes(good[:len(good) // 2])
    (root / "dog" / "empty.JPEG").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("not an image")
    skipped = {root / "cat" / "truncated.JPEG": "truncated", root / "dog" / "empty.JPEG": "empty",
               root / "dog" / "notes.txt": "not an image"}
    return root, converted, skipped


def test_folder_dataset_converts_what_it_can_and_skips_the_rest(messy_folder):
    root, converted, skipped = messy_folder
    source = folders.load_folder(str(root), val_fraction=0.2, seed=0)
    assert source.class_names == ["cat", "dog"]
    got_skipped = {Path(p): why for p, why in source.skipped}
    assert set(got_skipped) == set(skipped)
    for path, word in skipped.items():
        assert word in got_skipped[path], (path, got_skipped[path])
    got_converted = {Path(p): what for p, what in source.converted}
    assert set(got_converted) == set(converted)
    for path, what in converted.items():
        assert what in got_converted[path]
    assert source.num_train + source.num_validation == 12 + len(converted)

    # Training runs through the whole folder, the converted files included: uint8 squares for the step.
    batches = pipelines.train_pipeline(source, batch_size=3, size=76, crop=67, seed=0, shuffle_buffer=20)
    seen = 0
    for squares, labels, (offsets, flips, alphas) in batches.take(10):
        assert squares.dtype == tf.uint8 and squares.shape == (3, 76, 76, 3)
        assert offsets.shape == (3, 2) and flips.shape == (3,) and alphas.shape == (3, 3)
        assert set(labels.numpy()) <= {0, 1}
        seen += 1
    assert seen == 10
    evals = list(pipelines.eval_pipeline(source, batch_size=4, size=76))
    assert all(s.dtype == tf.uint8 and s.shape[1:] == (76, 76, 3) for s, _ in evals)
    assert sum(len(l) for _, l in evals) == source.num_validation


def test_a_folder_given_by_a_relative_path_is_read_from_anywhere(messy_folder, monkeypatch):
    """Issue 32: the paths go into the pipeline's graph, which a tf.data service worker started in another
    directory runs; relative ones made it spin for ever."""
    root, _, _ = messy_folder
    monkeypatch.chdir(root.parent)
    source = folders.load_folder(root.name)
    monkeypatch.chdir("/")  # where a worker may have been started
    image, label = next(iter(source.train))
    assert len(image.numpy()) > 0 and source.name == f"folder:{root}"


def test_held_out_split_is_deterministic_and_disjoint(messy_folder):
    root, _, _ = messy_folder
    a = folders.load_folder(str(root), val_fraction=0.3, seed=1)
    b = folders.load_folder(str(root), val_fraction=0.3, seed=1)

    def paths(ds):
        return sorted(bytes(x) for x, _ in ds.as_numpy_iterator())

    assert paths(a.validation) == paths(b.validation)
    assert not set(paths(a.validation)) & set(paths(a.train))


def test_train_and_val_subfolders(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for c in ("b_class", "a_class"):
            for i in range(n):
                save(tmp_path / split / c / f"{i}.png", random_rgb(i), fmt="PNG")
    source = data.load_dataset(f"folder:{tmp_path}")
    assert source.class_names == ["a_class", "b_class"]
    assert (source.num_train, source.num_validation) == (8, 4)
    labels = sorted(int(l) for _, l in source.validation.as_numpy_iterator())
    assert labels == [0, 0, 1, 1]


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "no class sub-folders"),
    ("unknown_val_class", "val/ has classes not in train/"),
])
def test_folder_errors_name_the_folder(tmp_path, layout, message):
    root = tmp_path / "ds"
    if layout == "empty":
        root.mkdir()
    if layout == "unknown_val_class":
        save(root / "train" / "a" / "0.png", random_rgb(0), fmt="PNG")
        save(root / "val" / "zebra" / "0.png", random_rgb(0), fmt="PNG")
    with pytest.raises(DatasetError, match=message) as e:
        data.load_dataset(f"folder:{root}")
    assert str(root) in str(e.value)


def test_unknown_tfds_name_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="dataset=no_such_dataset_xyz"):
        data.load_dataset("no_such_dataset_xyz", str(tmp_path))


def test_imagenet_class_names_ship_with_the_package():
    synsets, names = data.imagenet_class_names()
    assert len(synsets) == len(set(synsets)) == 1000
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert names[207] == "golden retriever"


def test_compute_statistics_matches_numpy():
    rng = np.random.default_rng(0)
    # Correlated colours, so the covariance has a clear leading direction.
    base = rng.uniform(0, 1, (4, 256, 256, 1))
    arrays = np.clip(np.concatenate([base * 200 + 20, base * 150 + 40, base * 100 + rng.uniform(0, 60, base.shape)],
                                    -1), 0, 255).astype(np.uint8)
    encoded = [tf.io.encode_png(a).numpy() for a in arrays]
    squares = tf.data.Dataset.from_tensor_slices(encoded).map(preprocessing.decode_center_256)
    stats = statistics.compute_statistics(squares, pixels_per_image=256 * 256)
    pixels = arrays.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], pixels.mean(0), rtol=1e-4)
    eigval, eigvec = np.linalg.eigh(np.cov(pixels / 255, rowvar=False))
    np.testing.assert_allclose(stats["eigval"], 255 * eigval[::-1], rtol=1e-3)
    lead = np.array(stats["eigvec"])[:, 0]
    assert abs(abs(lead @ eigvec[:, -1]) - 1) < 1e-4


def test_statistics_are_stored_beside_the_dataset(tmp_path, messy_folder):
    root, _, _ = messy_folder
    source = folders.load_folder(str(root))
    logs = []
    stats = statistics.dataset_statistics(source, str(tmp_path), log=logs.append)
    stored = list((tmp_path / "alexnet_tf_statistics").glob("*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text()) == stats
    assert np.array(stats["eigvec"]).shape == (3, 3) and len(stats["mean"]) == 3
    # The second call reads the file instead of recomputing.
    assert statistics.dataset_statistics(source, str(tmp_path), log=logs.append) == stats
    assert sum("computing" in line for line in logs) == 1


def test_deterministic_train_pipeline_is_reproducible(messy_folder):
    root, _, _ = messy_folder
    source = folders.load_folder(str(root))

    def first_batches(seed):
        ds = pipelines.train_pipeline(source, batch_size=4, size=76, crop=67, seed=seed, deterministic=True)
        return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in ds.take(3)]

    a, b, c = first_batches(5), first_batches(5), first_batches(6)
    for batch_a, batch_b in zip(a, b):
        tf.nest.map_structure(np.testing.assert_array_equal, batch_a, batch_b)  # squares, labels and draws
    assert not all(np.array_equal(xa[0], xc[0]) for xa, xc in zip(a, c))
    assert not all(np.array_equal(xa[2][0], xc[2][0]) for xa, xc in zip(a, c))  # other crops too


def _tar_member(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _jpeg_bytes(seed):
    buf = io.BytesIO()
    Image.fromarray(random_rgb(seed, (80, 100))).save(buf, "JPEG")
    return buf.getvalue()


def write_ilsvrc2012_tars(manual_dir, synsets=("n01440764", "n01443537"), per_class=3, val=4):
    """Tiny stand-ins for ILSVRC2012_img_{train,val}.tar in the official layout."""
    manual_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(manual_dir / "ILSVRC2012_img_train.tar", "w") as outer:  # a tar of per-synset tars
        for k, synset in enumerate(synsets):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(per_class):
                    _tar_member(tar, f"{synset}_{i}.JPEG", _jpeg_bytes(10 * k + i))
            _tar_member(outer, f"{synset}.tar", inner.getvalue())
    with tarfile.open(manual_dir / "ILSVRC2012_img_val.tar", "w") as tar:  # flat, ILSVRC file names
        for i in range(1, val + 1):
            _tar_member(tar, f"ILSVRC2012_val_{i:08d}.JPEG", _jpeg_bytes(100 + i))


def test_imagenet2012_builds_offline_from_the_official_tars(tmp_path):
    write_ilsvrc2012_tars(tmp_path / "downloads" / "manual")
    source = data.load_dataset("imagenet2012", str(tmp_path))
    assert (source.num_train, source.num_validation, source.num_classes) == (6, 4, 1000)
    assert source.class_names[:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert sorted(int(l) for _, l in source.train.as_numpy_iterator()) == [0, 0, 0, 1, 1, 1]
    # ILSVRC2012_val_00000001 is an alp (label 970) in the official ground truth.
    val_labels = [int(l) for _, l in source.validation.as_numpy_iterator()]
    assert sorted(val_labels) == sorted([970, 809, 65, 230])
    assert statistics.dataset_statistics(source, str(tmp_path)) == statistics.IMAGENET_STATISTICS

    # One training step runs on the result (the tiny model with ImageNet's 1000 classes).
    from alexnet_tf import config as cfg, training
    config = cfg.TrainConfig(dataset="imagenet2012", data_dir=str(tmp_path), workdir=str(tmp_path / "run"),
                             model=cfg.ModelConfig.of_preset("tiny"), batch_size=4, steps=1, eval_every=1)
    result, _ = training.train(config, log=lambda *_: None)
    assert result["step"] == 1 and np.isfinite(result["validation_loss"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["num_classes"] == 1000


def test_imagenet2012_without_tars_says_where_to_put_them(tmp_path):
    with pytest.raises(DatasetError, match="ILSVRC2012_img_train.tar"):
        data.load_dataset("imagenet2012", str(tmp_path))


@pytest.mark.heavy
def test_embedded_dataset_is_generated_offline_as_jpeg(shapes_dir):
    from alexnet_tf.datasets import shapes, shapes_render

    source = data.load_dataset(EMBEDDED_DATASET, str(shapes_dir))
    assert source.class_names == list(shapes_render.CLASS_NAMES)
    assert (source.num_train, source.num_validation) == (shapes.NUM_EXAMPLES["train"],
                                                         shapes.NUM_EXAMPLES["validation"])
    labels = np.array([int(l) for _, l in source.validation.as_numpy_iterator()])
    assert np.bincount(labels).tolist() == [shapes.NUM_EXAMPLES["validation"] // 10] * 10
    encoded, label = next(source.validation.as_numpy_iterator())
    assert encoded[:2] == b"\xff\xd8"  # stored as JPEG, so training exercises the real decode path
    image = tf.io.decode_jpeg(encoded).numpy()
    assert image.shape == (256, 256, 3)
    # Rendering is deterministic: the stored images are exactly the re-rendered
    # ones, JPEG-encoded as TFDS does (tf.image.encode_jpeg, default settings).
    stored = {bytes(b): int(l) for b, l in source.validation.as_numpy_iterator()}
    for i in range(shapes.NUM_EXAMPLES["validation"]):
        pixels, want_label = shapes_render.render("validation", i)
        assert stored[tf.image.encode_jpeg(pixels).numpy()] == want_label


def test_files_that_break_after_the_scan_are_skipped_and_when_none_can_be_read_the_run_says_so(tmp_path, shapes_folder):
    """Issue 32: the training stream skips a file that breaks after the scan (a long run must not end for one),
    but skipped them for ever when none could be read any more (every file gone, a data worker that sees other
    paths): a trainer waiting in silence at 100% CPU. Skipped within each epoch, an unreadable epoch is empty,
    and the stream ends; the trainer says so in one line, the training so far kept."""
    import shutil
    import threading
    import time

    from alexnet_tf import training
    from helpers import tiny_config

    folder = tmp_path / "folder"
    shutil.copytree(shapes_folder, folder)
    source = data.load_dataset(f"folder:{folder}", str(tmp_path / "data"), val_fraction=0.25)
    files = sorted(folder.rglob("*.jpg"))
    for f in files[::2]:
        f.write_bytes(b"not a jpeg any more")  # half: skipped, the stream goes on
    stream = pipelines.train_pipeline(source, batch_size=8, size=76, crop=67, seed=0, shuffle_buffer=64,
                                      deterministic=True, distribute=None)
    assert next(iter(stream))[0].shape == (8, 76, 76, 3)
    for f in files:
        f.write_bytes(b"not a jpeg any more")  # all: the stream ends (in a thread: before, it never did)
    ended = []
    threading.Thread(target=lambda: ended.append(next(iter(stream), "ended")), daemon=True).start()
    deadline = time.monotonic() + 60
    while not ended and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ended == ["ended"], "a stream of which no file can be read went on skipping them for 60 s"

    def log(line):  # once the run has scanned the folder and computed its statistics: every file breaks
        if line.startswith("stored statistics in"):
            for f in files:
                f.write_bytes(b"not a jpeg any more")

    shutil.rmtree(folder)
    shutil.copytree(shapes_folder, folder)
    with pytest.raises(DatasetError) as error:
        training.train(tiny_config(tmp_path / "run", folder, tmp_path / "data2", steps=4), log=log)
    assert str(error.value) == (f"dataset=folder:{folder}: no training image can be read any more (every file "
                                f"failed since the scan at start-up); the last checkpoint is "
                                f"{tmp_path / 'run' / 'checkpoints' / 'ckpt-0'}")
