"""`--recipe=original_code`: what the 2012 code (layers-145.cfg, layer-params-145.cfg) did where it
differs from the paper's text: the model's part, the optimizer's, the schedule's and the pipeline's."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import augmentation, config as cfg, export, optim, runs, training
from alexnet_tf.layers import SameMapResponseNormalization
from alexnet_tf.model import build_alexnet
from helpers import TINY, cli, tiny_config


def same_map_reference(x, size, k, alpha, beta):
    """cuda-convnet's convResponseNorm in NumPy: each pixel over its own channel's size x size window,
    clipped at the edges."""
    n, h, w, c = x.shape
    r = size // 2
    out = np.empty_like(x)
    for y in range(h):
        for i in range(w):
            window = x[:, max(0, y - r):y + r + 1, max(0, i - r):i + r + 1, :]
            out[:, y, i, :] = x[:, y, i, :] * (k + alpha * (window ** 2).sum(axis=(1, 2))) ** -beta
    return out


def test_same_map_normalization_matches_cuda_convnets_formula_eagerly_and_traced():
    x = np.random.default_rng(0).normal(0, 30, (2, 7, 6, 4)).astype(np.float32)
    layer = SameMapResponseNormalization(size=5, k=1.0, alpha=0.001 / 25, beta=0.75)
    expected = same_map_reference(x.astype(np.float64), 5, 1.0, 0.001 / 25, 0.75)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(tf.function(layer)(x).numpy(), expected, rtol=1e-5)
    assert not np.allclose(expected, x)  # the constants make it do something at this scale
    # Under mixed precision: bfloat16 in and out, float32 inside (as close to float32 as bfloat16's output allows).
    mixed = SameMapResponseNormalization(size=5, k=1.0, alpha=0.001 / 25, beta=0.75, dtype="mixed_bfloat16")
    out = mixed(tf.cast(x, tf.bfloat16))
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), layer(tf.cast(tf.cast(x, tf.bfloat16), tf.float32)),
                               rtol=1e-2)
    again = SameMapResponseNormalization.from_config(layer.get_config())
    assert (again.size, again.k, again.alpha, again.beta) == (5, 1.0, 0.001 / 25, 0.75)
    with pytest.raises(ValueError, match="size must be a positive odd integer .* got size=4"):
        SameMapResponseNormalization(size=4)


def test_same_map_normalization_gradient_matches_finite_differences():
    x = tf.constant(np.random.default_rng(1).normal(0, 20, (1, 5, 5, 2)), tf.float64)
    layer = SameMapResponseNormalization(alpha=0.01)
    theoretical, numerical = tf.test.compute_gradient(lambda t: tf.cast(layer(tf.cast(t, tf.float32)), tf.float64),
                                                      [x])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_original_code_net_is_built_as_layers_145_cfg_says():
    paper, code = build_alexnet(1000, seed=0), build_alexnet(1000, seed=0, recipe="original_code")
    assert code.count_params() == paper.count_params() == 60_965_224  # the changes have no weights
    names = [layer.name for layer in code.layers]
    # conv1 -> rnorm1 -> ReLU -> pool1 (pool1 carries neuron=relu); conv2 -> ReLU -> rnorm2 -> cnorm2 -> pool2.
    assert names.index("conv1_a") < names.index("norm1_a") < names.index("relu1_a") < names.index("pool1_a")
    assert names.index("norm2_a") < names.index("cnorm2_a") < names.index("pool2_a")
    assert code.get_layer("conv1_a").activation is keras.activations.linear
    assert paper.get_layer("conv1_a").activation is keras.activations.relu
    norm = code.get_layer("norm1_b")
    assert (norm.n, norm.k, norm.alpha, norm.beta) == (5, 2.0, pytest.approx(2e-5), 0.75)  # scale 1e-4 / size
    cnorm = code.get_layer("cnorm2_b")
    assert (cnorm.size, cnorm.k, cnorm.alpha, cnorm.beta) == (5, 1.0, pytest.approx(4e-5), 0.75)  # 0.001 / 25
    stds = {name: float(np.std(code.get_layer(f"{name}_a").kernel.numpy())) for name in ("conv2", "conv3", "fc6")}
    assert stds["conv2"] == pytest.approx(0.01, rel=0.05) and stds["fc6"] == pytest.approx(0.01, rel=0.05)
    assert stds["conv3"] == pytest.approx(0.03, rel=0.05)  # initW=0.03 in conv3-conv5
    sizes = {layer.name: layer.output.shape[1] for layer in code.layers if layer.name.startswith("pool")}
    assert (sizes["pool1_a"], sizes["pool2_a"], sizes["pool5_a"]) == (27, 13, 6)
    # The normalization sees conv1's negative outputs: the layer before the ReLU.
    probe = keras.Model(code.input, [code.get_layer("norm1_a").output, code.get_layer("relu1_a").output])
    before, after = probe(tf.random.uniform((1, 227, 227, 3), -100, 100, seed=0))
    assert float(tf.reduce_min(before)) < 0 and float(tf.reduce_min(after)) == 0
    no_norm = build_alexnet(10, image_size=67, width=0.125, recipe="original_code", lrn=None)
    assert not [layer for layer in no_norm.layers if "norm" in layer.name]
    with pytest.raises(ValueError, match="lrn='caffe' cannot be combined with recipe='original_code'"):
        build_alexnet(recipe="original_code", lrn="caffe")
    with pytest.raises(ValueError, match="recipe must be 'paper' or 'original_code', got 'caffe'"):
        build_alexnet(recipe="caffe")


def test_fixed_bias_rate_and_layer_scale_follow_the_codes_update_rule():
    # Two layers named like the model's; cuda-convnet's rule per variable: v <- 0.9 v - eps (g + wc w); w += v,
    # with wc on weights only and eps = epsB for biases.
    inputs = keras.Input((3,))
    h = keras.layers.Dense(2, name="conv1_a")(inputs)
    out = keras.layers.Dense(1, name="fc8")(h)
    model = keras.Model(inputs, out)
    scale = tf.Variable(0.1, trainable=False)
    optimizer = optim.make_optimizer(model.trainable_variables, lr=0.01, bias_learning_rate=0.02,
                                     layer_scales={"conv1": scale})
    weights = [v.numpy().copy() for v in model.trainable_variables]
    grads = [np.full_like(w, 0.5) for w in weights]
    optimizer.learning_rate.assign(0.001)  # the schedule lowered the weights' rate; the biases' stays 0.02
    optimizer.apply_gradients(zip([tf.constant(g) for g in grads], model.trainable_variables))
    for w0, g, v in zip(weights, grads, model.trainable_variables):
        kernel = v.path.endswith("kernel")
        rate = (0.001 if kernel else 0.02) * (0.1 if v.path.startswith("conv1") else 1.0)
        np.testing.assert_allclose(v.numpy(), w0 - rate * (g + (5e-4 * w0 if kernel else 0)), rtol=1e-5,
                                   err_msg=v.path)


def test_the_logged_calendar_at_90_epochs_and_stretched():
    schedule = optim.OriginalCodeSchedule(0.01, 90)
    lr = tf.Variable(0.01)
    seen = {}
    for epoch in (0, 24.9, 25, 50.9, 51, 66.9, 67, 71.9, 72, 78.9, 79, 89):
        schedule.after_step(lr, 0, epoch)
        seen[epoch] = (float(lr.numpy()), float(schedule.conv1_scale.numpy()))
    assert seen[24.9] == (pytest.approx(0.01), 1.0) and seen[25] == (pytest.approx(1e-3), 1.0)
    assert seen[51][0] == pytest.approx(1e-4) and seen[66.9][1] == 1.0
    assert seen[67][1] == pytest.approx(0.1) and seen[72][1] == 0.0
    assert seen[79][0] == pytest.approx(1e-5) and seen[89] == (pytest.approx(1e-5), 0.0)
    assert schedule.colour_noise_until(steps_per_epoch=10) == 670
    short = optim.OriginalCodeSchedule(0.01, 18)  # a fifth of the length: everything at a fifth of the epoch
    assert short.at(4.99) == (0, 1.0) and short.at(5.0) == (1, 1.0) and short.at(14.4) == (2, 0.0)
    assert short.colour_noise_until(steps_per_epoch=10) == 134


def test_the_recipes_colour_noise_stops_at_its_calendars_step(tmp_path, shapes_folder):
    """The run's augmentation (augmentation.for_run, as training builds it) stops the colour noise at the step
    the 2012 calendar names, counted by the run's step variable inside the step."""
    config = runs.make_config(**{**vars(tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data")),
                                 "recipe": "original_code", "lr_schedule": None})
    stats = {"mean": [0.0] * 3, "eigval": [500.0, 50.0, 5.0], "eigvec": np.eye(3).tolist()}
    until = optim.OriginalCodeSchedule(0.01, 90).colour_noise_until(steps_per_epoch=10)
    step = tf.Variable(0, dtype=tf.int64)
    augment, _ = augmentation.for_run(config, stats, step=step, colour_noise_until=until)
    squares = tf.random.uniform((6, 76, 76, 3), 0, 255, dtype=tf.int32, seed=1)
    squares = tf.cast(squares, tf.uint8)
    draws = augmentation.draw(tf.constant([3, 0], tf.int64), 6, size=76, crop=67)
    plain = augmentation.train_images(squares, draws, crop=67, pca_lighting=False, **stats)
    lit = augmentation.train_images(squares, draws, crop=67, **stats)
    assert not np.allclose(lit, plain, atol=1e-2)
    for at, want in ((until - 1, lit), (until, plain)):
        step.assign(at)
        np.testing.assert_allclose(augment(squares, draws).numpy(), want.numpy(), atol=1e-4)


def test_original_code_recipe_trains_records_resumes_and_exports(tmp_path, shapes_folder):
    tiny = tiny_config(tmp_path / "run", shapes_folder, tmp_path / "data", steps=9, eval_every=9)
    config = runs.make_config(**{**vars(tiny), "lr_schedule": None, "recipe": "original_code"})
    assert config.lr_schedule == "original_code"  # the recipe brings its calendar unless one is given
    result, run = training.train(config, log=lambda *_: None)
    assert result["step"] == 9 and np.isfinite(result["validation_loss"])
    # Three drops over the run (at 25/90, 51/90 and 79/90 of it), conv1 stopped at 72/90.
    assert float(run.state.optimizer.learning_rate.numpy()) == pytest.approx(config.lr * 1e-3)
    assert float(optim.checkpointed(run.state.schedule).conv1_scale.numpy()) == 0.0
    assert run.state.optimizer.bias_learning_rate == pytest.approx(2 * config.lr)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["model"]["recipe"] == "original_code" and recorded["lr_schedule"] == "original_code"
    model, _, prep = export.load_trained(tmp_path / "run")  # rebuilt as the same variant
    assert "cnorm2_a" in [layer.name for layer in model.layers]
    x = tf.random.uniform((2, TINY["image_size"], TINY["image_size"], 3), -50, 50, seed=0)
    saved = tf.saved_model.load(str(export.export_savedmodel(model, prep, tmp_path / "export")))
    np.testing.assert_allclose(saved.signatures["preprocessed"](images=x)["probabilities"].numpy(),
                               tf.nn.softmax(model(x)).numpy(), atol=1e-5)
    # Changing the recipe of a run in progress is refused like any other model change.
    with pytest.raises(ValueError, match="recipe"):
        training.train(runs.make_config(**{**vars(config), "recipe": "paper", "steps": 10}), log=lambda *_: None)


def test_recipe_flag_errors_are_one_line():
    proc = cli("train", "--recipe=original_code", "--lrn=caffe", "--steps=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "alexnet-train: error: --lrn='caffe': cannot be combined with recipe=original_code, which has the 2012 "
        "code's own LRN; use paper or none"]
