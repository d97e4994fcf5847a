"""The paper's ablations as options of build_alexnet and flags of alexnet-train: LRN, pooling, towers,
augmentation. Each variant: shapes, parameter count from the layer table, a training step, export and reload."""

import json

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import export, training
from alexnet_tf.model import build_alexnet
from helpers import TINY, tiny_config


def conv(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def dense(n_in, n_out):
    return n_in * n_out + n_out


def test_one_tower_net_has_the_papers_layer_sizes_and_about_the_same_parameters():
    # The footnote to Section 3.2: conv1-conv4 with 48, 128, 192, 192 kernels, conv5 with 256, fc 4096, 4096.
    expected = (conv(11, 3, 48) + conv(5, 48, 128) + conv(3, 128, 192) + conv(3, 192, 192) + conv(3, 192, 256)
                + dense(6 * 6 * 256, 4096) + dense(4096, 4096) + dense(4096, 1000))
    assert expected == 59_798_312
    model = build_alexnet(1000, towers=1)
    assert model.count_params() == expected
    assert abs(expected - 60_965_224) / 60_965_224 < 0.02  # "about the same number of parameters"
    kernels = {layer.name: layer.kernel.shape[-1] for layer in model.layers if hasattr(layer, "kernel")}
    assert kernels == {"conv1_a": 48, "conv2_a": 128, "conv3_a": 192, "conv4_a": 192, "conv5_a": 256,
                       "fc6_a": 4096, "fc7_a": 4096, "fc8": 1000}


@pytest.mark.parametrize("variant", [dict(pool="non_overlapping"), dict(towers=1), dict(lrn=None),
                                     dict(lrn="caffe"), dict(towers=1, pool="non_overlapping")])
def test_every_variant_keeps_the_feature_map_sizes(variant):
    model = build_alexnet(1000, **variant)
    sizes = {layer.name: layer.output.shape[1] for layer in model.layers if layer.name.startswith(("conv", "pool"))
             and layer.name != "conv1_pad"}
    assert (sizes["conv1_a"], sizes["pool1_a"], sizes["pool2_a"], sizes["conv5_a"], sizes["pool5_a"]) == \
        (55, 27, 13, 13, 6), sizes
    norms = [layer for layer in model.layers if layer.name.startswith("norm")]
    assert len(norms) == (0 if variant.get("lrn", "paper") is None else 4 // (3 - variant.get("towers", 2)))
    if variant.get("pool") == "non_overlapping":
        assert model.get_layer("pool1_a").pool_size == (2, 2) and model.get_layer("pool1_a").strides == (2, 2)
    # Parameters do not depend on the LRN or the pooling.
    if variant.get("towers", 2) == 2:
        assert model.count_params() == 60_965_224


def test_bad_variant_arguments_say_what_was_received():
    with pytest.raises(ValueError, match="pool must be 'overlapping' or 'non_overlapping', got 'avg'"):
        build_alexnet(pool="avg")
    with pytest.raises(ValueError, match="towers must be 2 .* or 1 .*, got 3"):
        build_alexnet(towers=3)


@pytest.mark.parametrize("variant", [dict(towers=1), dict(pool="non_overlapping", lrn="none"),
                                     dict(pca_lighting=False, flip=False)],
                         ids=["one_tower", "no_lrn_non_overlapping", "no_augmentation"])
def test_each_variant_trains_is_recorded_and_exports(tmp_path, shapes_folder, variant):
    config = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data", steps=2, eval_every=2, **variant)
    result, run = training.train(config, log=lambda *_: None)
    assert result["step"] == 2 and np.isfinite(result["validation_loss"])
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    recorded = {**recorded, **recorded["model"]}  # the network's settings are nested under "model"
    assert {k: recorded[k] for k in variant} == {k: None if v == "none" else v for k, v in variant.items()}
    model, _, prep = export.load_trained(tmp_path / "run")  # rebuilt as the same variant
    assert model.count_params() == run.state.model.count_params()
    saved = export.export_savedmodel(model, prep, tmp_path / "export")
    loaded = tf.saved_model.load(str(saved))
    x = tf.random.uniform((2, TINY["image_size"], TINY["image_size"], 3), -50, 50, seed=0)
    np.testing.assert_allclose(loaded.signatures["preprocessed"](images=x)["probabilities"].numpy(),
                               tf.nn.softmax(model(x)).numpy(), atol=1e-5)


def test_study_trains_two_variants_and_writes_a_table_and_a_plot(tmp_path, shapes_folder):
    from PIL import Image

    from helpers import cli

    args = [f"--dataset=folder:{shapes_folder}", f"--data_dir={tmp_path}/data", f"--workdir={tmp_path}/study",
            "--preset=tiny", "--batch_size=8", "--steps=4", "--eval_every=2", "--log_every=1",
            "--variants=paper,no_lrn"]
    proc = cli("study", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "variant 1/2: paper" in proc.stdout and "variant 2/2: no_lrn" in proc.stdout
    table = (tmp_path / "study" / "study.md").read_text().splitlines()
    assert table[0].startswith("| variant | val top-1 error | val top-5 error | parameters |")
    rows = {line.split("|")[1].strip(): line.split("|")[2:] for line in table[2:]}
    assert set(rows) == {"paper", "no_lrn"}
    assert rows["paper"][2].strip() == rows["no_lrn"][2].strip() == "325,114"  # LRN has no parameters
    assert "+1.4 / +1.2 (paper" in rows["no_lrn"][5]
    image = Image.open(tmp_path / "study" / "study.png")
    assert image.size == (800, 500)
    pixels = np.asarray(image.convert("RGB"), np.float32)
    assert pixels.std() > 5  # a drawn plot, not a blank page
    for variant in ("paper", "no_lrn"):
        recorded = json.loads((tmp_path / "study" / variant / "config.json").read_text())
        assert recorded["model"]["lrn"] == ("paper" if variant == "paper" else None) and recorded["total_steps"] == 4
    # Rerunning resumes each variant instead of training it again.
    again = cli("study", *args, timeout=600)
    assert again.returncode == 0 and again.stdout.count("resumed from") == 2, again.stdout
