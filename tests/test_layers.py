import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import layers
from alexnet_tf.layers import LocalResponseNormalization

# The LRN has two implementations of one function: XLA-fused loops (training
# and inference in TensorFlow) and plain ops (what export traces). Both are
# checked against the formula.
IMPLEMENTATIONS = ["xla", "plain"]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    if request.param == "plain":
        with layers.plain_ops():
            yield request.param
    else:
        yield request.param


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
def test_matches_paper_formula_eagerly(activations, params, implementation):
    got = LocalResponseNormalization(**params)(activations).numpy()
    want = lrn_reference(activations, **params)
    assert np.abs(want / activations - 1).max() > 0.05, "inputs too small to exercise the normalization"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_matches_paper_formula_in_tf_function(activations, implementation):
    layer = LocalResponseNormalization()
    got = tf.function(layer)(tf.constant(activations)).numpy()
    np.testing.assert_allclose(got, lrn_reference(activations), rtol=1e-5, atol=1e-5)


def lrn_gradient_reference(a, dy, n=5, k=2.0, alpha=1e-4, beta=0.75):
    """d(sum(dy * lrn(a)))/da by central differences of the NumPy formula, in float64."""
    a = np.asarray(a, np.float64)
    grad = np.empty_like(a)
    step = 1e-3
    for index in np.ndindex(a.shape):
        plus, minus = a.copy(), a.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = np.sum(dy * (lrn_reference(plus, n, k, alpha, beta)
                                   - lrn_reference(minus, n, k, alpha, beta))) / (2 * step)
    return grad


# beta 0.75 and 0.5 take the rsqrt paths, 1.0 the reciprocal, 0.6 the general pow.
@pytest.mark.parametrize("params", [{}, dict(n=3, k=1.0, alpha=1e-3, beta=0.5), dict(alpha=3e-4, beta=0.6),
                                    dict(alpha=2e-4, beta=1.0)])
@pytest.mark.parametrize("mode", ["eager", "tf.function"])
def test_gradient_matches_the_formulas_derivative(params, mode, implementation):
    rng = np.random.default_rng(1)
    a = (rng.normal(size=(1, 2, 2, 7)) * 40).astype(np.float32)
    dy = rng.normal(size=a.shape).astype(np.float32)
    layer = LocalResponseNormalization(**params)

    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return tape.gradient(y, x, output_gradients=tf.constant(dy))

    got = (tf.function(grad) if mode == "tf.function" else grad)(tf.constant(a)).numpy()
    want = lrn_gradient_reference(a, dy, **params)
    # The normalization must matter: the gradient is far from dy / k^beta alone.
    assert np.abs(want - dy / (layer.k ** layer.beta)).max() > 0.05 * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_value_and_gradient_equal_tensorflows_kernel(implementation):
    """Same function as tf.nn.local_response_normalization, on a tower-sized slice."""
    rng = np.random.default_rng(2)
    x = tf.constant((rng.normal(size=(2, 13, 13, 48)) * 30).astype(np.float32))
    dy = tf.constant(rng.normal(size=x.shape).astype(np.float32))
    results = []
    for fn in (LocalResponseNormalization(),
               lambda t: tf.nn.local_response_normalization(t, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        results.append((y.numpy(), tape.gradient(y, x, output_gradients=dy).numpy()))
    (y, dx), (y_tf, dx_tf) = results
    np.testing.assert_allclose(y, y_tf, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_tf, rtol=1e-4, atol=1e-5)


def test_defaults_are_the_papers_constants():
    layer = LocalResponseNormalization()
    assert (layer.n, layer.k, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75)


def _arithmetic_ops(graph):
    """(type, T) of the LRN's arithmetic ops in `graph` and in every function it calls."""
    graph_def = graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return [(n.op, tf.dtypes.as_dtype(n.attr["T"].type)) for n in nodes
            if n.op in ("Square", "MatMul", "Rsqrt", "Sqrt", "Mul", "AddN")]


def test_computes_in_float32_under_mixed_precision(activations, implementation):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    layer = LocalResponseNormalization()
    fn = tf.function(layer)
    out = fn(tf.constant(activations))
    assert out.dtype == tf.bfloat16  # output in the policy's compute dtype
    arithmetic = _arithmetic_ops(fn.get_concrete_function(tf.constant(activations)).graph)
    assert {"Square", "Rsqrt", "Mul"} <= {op for op, _ in arithmetic}
    assert all(dtype == tf.float32 for _, dtype in arithmetic), arithmetic
    rounded = tf.cast(tf.cast(activations, tf.bfloat16), tf.float32).numpy()
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), lrn_reference(rounded), rtol=1e-2, atol=1e-2)


def test_gradient_under_mixed_precision_is_the_float32_gradient_rounded(implementation):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    rng = np.random.default_rng(4)
    x = tf.constant((rng.normal(size=(2, 3, 3, 16)) * 40).astype(np.float32))
    dy = tf.constant(rng.normal(size=x.shape).astype(np.float32))

    def grad(layer, dtype):
        xd = tf.cast(x, dtype)
        with tf.GradientTape() as tape:
            tape.watch(xd)
            y = layer(xd)
        return tape.gradient(y, xd, output_gradients=tf.cast(dy, y.dtype))

    got = grad(LocalResponseNormalization(), tf.bfloat16)
    assert got.dtype == tf.bfloat16
    keras.mixed_precision.set_global_policy("float32")
    want = grad(LocalResponseNormalization(), tf.float32)
    # bf16 input and dy, float32 arithmetic: within bf16 rounding of the float32 gradient.
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want.numpy(), rtol=3e-2, atol=3e-2 * float(tf.reduce_max(tf.abs(want))))


def test_the_two_implementations_trace_to_what_they_claim():
    x = tf.constant(np.ones((1, 3, 3, 8), np.float32))
    fused = tf.function(LocalResponseNormalization()).get_concrete_function(x).graph.as_graph_def()
    with layers.plain_ops():
        plain = tf.function(LocalResponseNormalization()).get_concrete_function(x).graph.as_graph_def()
    must_compile = [f for f in fused.library.function if f.attr["_XlaMustCompile"].b]
    assert must_compile, "the LRN should run as an XLA-compiled function"
    assert not [f for f in plain.library.function if f.attr["_XlaMustCompile"].b]
    assert "MatMul" in {n.op for n in plain.node}  # the band-matmul formulation


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


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_dense_equals_keras_dense_in_value_and_gradients(policy):
    """layers.Dense only computes the input gradient differently: (W dy^T)^T instead of dy W^T."""
    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(6, 40)).astype(np.float32))
    ours = layers.Dense(9, activation="relu", bias_initializer="ones")
    theirs = keras.layers.Dense(9, activation="relu", bias_initializer="ones")
    ours.build((None, 40)), theirs.build((None, 40))
    theirs.set_weights(ours.get_weights())
    dy = rng.normal(size=(6, 9)).astype(np.float32)

    def value_and_grads(layer):
        @tf.function
        def fn():
            y = layer(x)
            return y, tf.gradients(y, [x] + [v.value for v in layer.trainable_variables], tf.cast(dy, y.dtype))
        y, grads = fn()
        return [tf.cast(t, tf.float32).numpy() for t in [y] + grads]

    got, want = value_and_grads(ours), value_and_grads(theirs)
    assert got[0].dtype == want[0].dtype and np.abs(want[1]).max() > 0  # the input gradient is not trivially 0
    for name, a, b in zip(["output", "input gradient", "kernel gradient", "bias gradient"], got, want):
        # fp32: the input gradient's sum runs in another order (1 ulp); bf16 is identical.
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=name)


def test_dense_takes_keras_path_for_other_ranks_and_round_trips():
    layer = layers.Dense(3)
    x = tf.ones((2, 4, 5))
    assert layer(x).shape == (2, 4, 3)  # rank 3: Keras' own matmul
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, layers.Dense) and clone.get_config() == layer.get_config()


@pytest.mark.parametrize("channels", [6, 48])
def test_cross_tower_lrn_is_the_lrn_of_both_towers_channels(channels, implementation):
    """Caffe's norm over all channels of a grouped layer, computed per tower: each tower's half of
    tf.nn.local_response_normalization over the concatenated map."""
    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.uniform(0, 300, (2, 5, 5, channels)).astype(np.float32)) for _ in range(2))
    want = tf.nn.local_response_normalization(tf.concat([a, b], -1), depth_radius=2, bias=1.0, alpha=2e-5,
                                              beta=0.75).numpy()
    constants = dict(n=5, k=1.0, alpha=2e-5, beta=0.75)
    got_a = layers.CrossTowerLRN(tower="a", **constants)([a, b]).numpy()
    got_b = layers.CrossTowerLRN(tower="b", **constants)([b, a]).numpy()
    np.testing.assert_allclose(np.concatenate([got_a, got_b], -1), want, rtol=1e-5)
    # The boundary channels really see the other tower: per-tower windows differ there.
    alone = LocalResponseNormalization(**constants)(a).numpy()
    assert np.abs(alone[..., -1] - got_a[..., -1]).max() > 1e-3 * np.abs(got_a).max()
    np.testing.assert_allclose(alone[..., :-2], got_a[..., :-2], rtol=1e-5)
