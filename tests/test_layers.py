import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf.layers import LocalResponseNormalization


def lrn_reference(a, n=5, k=2.0, alpha=1e-4, beta=0.75):
    """The paper's formula, Section 3.3, written out channel by channel."""
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    out = np.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
        out[..., i] = a[..., i] / (k + alpha * s) ** beta
    return out


# Inputs scaled so that alpha * sum(a^2) is not negligible next to k.
@pytest.fixture
def activations():
    return (np.random.default_rng(0).normal(size=(2, 5, 7, 12)) * 40).astype(np.float32)


@pytest.mark.parametrize("params", [{}, dict(n=3, k=1.0, alpha=1e-3, beta=0.5)])
def test_matches_paper_formula_eagerly(activations, params):
    got = LocalResponseNormalization(**params)(activations).numpy()
    want = lrn_reference(activations, **params)
    assert np.abs(want / activations - 1).max() > 0.05, "inputs too small to exercise the normalization"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_matches_paper_formula_in_tf_function(activations):
    layer = LocalResponseNormalization()
    got = tf.function(layer)(tf.constant(activations)).numpy()
    np.testing.assert_allclose(got, lrn_reference(activations), rtol=1e-5, atol=1e-5)


def test_defaults_are_the_papers_constants():
    layer = LocalResponseNormalization()
    assert (layer.n, layer.k, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75)


def test_computes_in_float32_under_mixed_precision(activations):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layer = LocalResponseNormalization()
    fn = tf.function(layer)
    out = fn(tf.constant(activations))
    assert out.dtype == tf.bfloat16  # output in the policy's compute dtype
    graph = fn.get_concrete_function(tf.constant(activations)).graph
    lrn_ops = [op for op in graph.get_operations() if op.type == "LRN"]
    assert lrn_ops and all(op.get_attr("T") == tf.float32 for op in lrn_ops)
    rounded = tf.cast(tf.cast(activations, tf.bfloat16), tf.float32).numpy()
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), lrn_reference(rounded), rtol=1e-2, atol=1e-2)


def test_serialization_round_trip(activations, tmp_path):
    layer = LocalResponseNormalization(n=3, k=1.5, alpha=2e-4, beta=0.7, name="norm")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, LocalResponseNormalization)
    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(clone(activations).numpy(), layer(activations).numpy())

    inputs = keras.Input(activations.shape[1:])
    model = keras.Model(inputs, LocalResponseNormalization(n=3, alpha=1e-3)(inputs))
    model.save(tmp_path / "lrn.keras")
    loaded = keras.saving.load_model(tmp_path / "lrn.keras")
    np.testing.assert_array_equal(loaded(activations).numpy(), model(activations).numpy())


@pytest.mark.parametrize("bad, message", [(dict(n=4), "n=4"), (dict(n=0), "n=0"), (dict(alpha=-1.0), "alpha=-1.0")])
def test_rejects_bad_constants(bad, message):
    with pytest.raises(ValueError, match=message):
        LocalResponseNormalization(**bad)
