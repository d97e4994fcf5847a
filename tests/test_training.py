
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import config as cfg, optim, steps, summaries
from alexnet_tf.model import build_alexnet
from helpers import TINY


def numpy_paper_rule(weights, velocities, grads_of_ce, kernel_mask, lr, momentum, weight_decay):
    """v <- m v - wd lr w - lr dL/dw (wd on kernels only); w <- w + v."""
    new_w, new_v = [], []
    for w, v, g, is_kernel in zip(weights, velocities, grads_of_ce, kernel_mask):
        v = momentum * v - (weight_decay * lr * w if is_kernel else 0) - lr * g
        new_w.append(w + v)
        new_v.append(v)
    return new_w, new_v


def test_train_step_is_the_papers_update_rule():
    """Several real train steps (dropout off) against the paper's rule computed in NumPy (float64)."""
    model = build_alexnet(**TINY, dropout=0.0, seed=0)
    lr, momentum, weight_decay, batch = 0.05, 0.9, 5e-2, 4  # large decay so its term is visible
    optimizer = optim.PaperSGD(learning_rate=lr, momentum=momentum, l2_decay=weight_decay)
    optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    step = steps.make_train_step(model, optimizer, global_batch_size=batch, strategy=strategy)
    rng = np.random.default_rng(0)
    variables = model.trainable_variables
    kernel_mask = [v.path.endswith("kernel") for v in variables]
    assert sum(kernel_mask) == 15 and len(kernel_mask) == 30
    weights = [v.numpy().astype(np.float64) for v in variables]
    velocities = [np.zeros_like(w) for w in weights]

    @tf.function
    def ce_grads(images, labels):
        logits = model(images, training=True)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tf.gradients(loss, [v.value for v in variables])

    for _ in range(4):
        images = tf.constant(rng.normal(0, 60, (batch, 67, 67, 3)).astype(np.float32))
        labels = tf.constant(rng.integers(0, 10, batch).astype(np.int64))
        # dL/dw of the cross-entropy alone, at the current weights, from TF...
        g = [x.numpy().astype(np.float64) for x in ce_grads(images, tf.cast(labels, tf.int32))]
        # ...then the rule in NumPy, and the real step.
        weights, velocities = numpy_paper_rule(weights, velocities, g, kernel_mask, lr, momentum, weight_decay)
        step(images, labels)
        for v, w in zip(variables, weights):
            np.testing.assert_allclose(v.numpy(), w, rtol=0, atol=2e-6, err_msg=v.path)
    # The decay term mattered: without it the kernels would have moved differently.
    assert weight_decay * lr * np.abs(weights[0]).max() > 1e-5


def test_paper_sgd_refuses_keras_decoupled_weight_decay():
    # Keras' weight_decay is w <- w - wd lr w after the step, not the paper's rule.
    with pytest.raises(ValueError, match="use l2_decay"):
        optim.PaperSGD(0.01, momentum=0.9, weight_decay=5e-4)
    assert optim.PaperSGD(0.01, l2_decay=1e-3).get_config()["l2_decay"] == 1e-3


def test_plateau_schedule_divides_by_ten_after_patience_evaluations():
    lr = tf.Variable(0.01)
    schedule = optim.PlateauSchedule(patience=2, max_drops=2)
    errors = [0.9, 0.8, 0.8, 0.85, 0.7, 0.75, 0.72, 0.71, 0.71, 0.71, 0.71, 0.71]
    assert not schedule.after_step(lr, step=500, epoch=5.0)  # steps do not move it
    drops = [schedule.after_evaluation(lr, e) for e in errors]
    # Two evaluations without beating the best (0.8) -> drop; then 0.7 is a new
    # best; two more without -> second drop; max_drops=2 stops further drops.
    assert drops == [False, False, False, True, False, False, True, False, False, False, False, False]
    assert np.isclose(lr.numpy(), 0.0001)
    assert int(schedule.drops.numpy()) == 2


def test_step_schedule_divides_by_ten_every_n_epochs():
    lr = tf.Variable(0.01)
    schedule = optim.StepSchedule(base_lr=0.01, step_epochs=2, max_drops=2)
    rates = []
    for epoch in [0.5, 1.9, 2.0, 3.5, 4.1, 6.0, 9.0]:
        assert not schedule.after_evaluation(lr, 0.5)  # evaluations do not move it
        schedule.after_step(lr, step=int(epoch * 100), epoch=epoch)
        rates.append(float(lr.numpy()))
    np.testing.assert_allclose(rates, [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001, 0.0001], rtol=1e-6)


def test_schedule_state_is_checkpointed(tmp_path):
    schedule = optim.PlateauSchedule(patience=3, max_drops=3)
    lr = tf.Variable(0.01)
    for e in (0.5, 0.6, 0.6):
        schedule.after_evaluation(lr, e)
    tf.train.Checkpoint(schedule=schedule).write(str(tmp_path / "ckpt"))
    restored = optim.PlateauSchedule(patience=3, max_drops=3)
    tf.train.Checkpoint(schedule=restored).read(str(tmp_path / "ckpt")).assert_consumed()
    assert float(restored.best_error.numpy()) == 0.5 and int(restored.evals_since_best.numpy()) == 2


def test_warmup_ramps_then_hands_over_to_the_wrapped_schedule():
    lr = tf.Variable(0.0)
    inner = optim.StepSchedule(base_lr=0.04, step_epochs=1, max_drops=3)
    schedule = optim.Warmup(inner, base_lr=0.04, warmup_steps=4)
    rates = []
    for step in range(8):  # 4 steps per epoch; the hook sets the rate of step `step` (0-based)
        schedule.after_step(lr, step, step / 4)
        rates.append(float(lr.numpy()))
    # Ramp 1/4..4/4 of the rate; step 4 is the ramp's last value; then the step schedule's first drop.
    np.testing.assert_allclose(rates, [0.01, 0.02, 0.03, 0.04, 0.04, 0.004, 0.004, 0.004], rtol=1e-6)
    assert optim.checkpointed(schedule) is inner and optim.checkpointed(inner) is inner
    assert schedule.after_evaluation(lr, 0.5) is False


def test_first_layer_grid_shows_every_conv1_kernel():
    model = build_alexnet(10, image_size=67, seed=0)  # full width: 2 x 48 kernels of 11x11
    grid = summaries.first_layer_grid(model).numpy()
    assert grid.shape[0] == 1 and grid.shape[-1] == 3
    assert grid.shape[1] * grid.shape[2] == 96 * 13 * 13  # every kernel with a 1-pixel border
    assert grid.min() >= 0 and grid.max() <= 1
    kernel = model.get_layer("conv1_a").kernel.numpy()[..., 0]
    tile = grid[0, 1:12, 1:12]
    np.testing.assert_allclose(tile, (kernel - kernel.min()) / (kernel.max() - kernel.min()), atol=1e-6)


@pytest.mark.parametrize("field, value, message", [
    ("preset", "huge", "preset='huge': must be one of paper, tiny"),
    ("batch_size", 0, "batch_size=0: must be >= 1"),
    ("lr", 0.0, "lr=0.0: must be a finite number > 0"),
    ("lr", float("inf"), "lr=inf: must be a finite number > 0"),
    ("strategy", "mirrored", "tower_devices=.*cannot be combined with strategy=mirrored.*use strategy=multi_worker"),
])
def test_config_errors_name_the_field(field, value, message):
    config = cfg.TrainConfig(**{field: value}) if field != "preset" else cfg.TrainConfig(
        model=cfg.ModelConfig(preset=value))
    if field == "strategy":
        config.tower_devices = ("/CPU:0", "/CPU:0")
    with pytest.raises(ValueError, match=message):
        config.check()


def test_weight_histogram_writes_what_tf_summary_histogram_writes(tmp_path):
    values = tf.constant(np.random.default_rng(3).normal(0, 0.01, (11, 11, 3, 6)).astype(np.float32))
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=1):
        summaries.weight_histogram("ours", values)
        tf.summary.histogram("tensorboards", values)
    writer.flush()
    records, plugins = {}, {}
    for path in tmp_path.iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                records[value.tag] = tf.make_ndarray(value.tensor)
                plugins[value.tag] = value.metadata.plugin_data.plugin_name
    ours, theirs = records["ours"], records["tensorboards"]
    assert plugins["ours"] == plugins["tensorboards"] == "histograms"
    assert ours.shape == theirs.shape == (30, 3) and ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours[:, :2], theirs[:, :2], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(ours[:, 2], theirs[:, 2])
