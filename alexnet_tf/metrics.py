"""The train step's metrics as the loop keeps them: sums on the device between logs (`Window`), read back only
when they are reported, so a GPU is not synchronised every step; and the run's images/s (`Rate`)."""

import time

import tensorflow as tf


class NonFiniteLoss(RuntimeError):
    """Training stopped because the loss was NaN or infinite."""


class Window:
    """The train step's sums since the last log, kept as tensors on the device until `read`."""

    def __init__(self):
        self.sums, self.steps, self.images = None, 0, 0
        self.first_bad = (tf.constant(0, tf.int64), tf.constant(0.0))  # (step, loss) of the first NaN/inf
        self.started = time.perf_counter()

    def add(self, step, outputs, batch_size):
        ce = outputs[0]
        bad = (self.first_bad[0] == 0) & ~tf.math.is_finite(ce)
        self.first_bad = (tf.where(bad, tf.constant(step, tf.int64), self.first_bad[0]),
                          tf.where(bad, ce, self.first_bad[1]))
        self.sums = list(outputs) if self.sums is None else [a + b for a, b in zip(self.sums, outputs)]
        self.steps += 1
        self.images += batch_size

    def read(self, last_checkpoint):
        """The window's means as floats (this waits for its steps); NonFiniteLoss if a loss was NaN/inf."""
        bad_step = int(self.first_bad[0])
        if bad_step:
            raise NonFiniteLoss(
                f"the loss became {float(self.first_bad[1])} at step {bad_step}; training stopped. The last good "
                f"checkpoint ({last_checkpoint or 'none yet'}) is untouched. Try a lower --lr.")
        ce, top1, top5, gnorm = (float(v) for v in self.sums)
        n = self.images
        return {"loss": ce / n, "top1_error": 1 - top1 / n, "top5_error": 1 - top5 / n,
                "gradient_norm": gnorm / self.steps, "images_per_second": n / (time.perf_counter() - self.started)}


class Rate:
    """Images/s over this run's steps, not counting the first (it traces and compiles)."""

    def __init__(self):
        self.images, self.since = 0, None

    def count(self, window, batch_size, last_checkpoint):
        if self.since is None:
            window.read(last_checkpoint)  # waits for the first step
            self.since = time.perf_counter()
        else:
            self.images += batch_size

    def per_second(self):
        return self.images / max(time.perf_counter() - self.since, 1e-9)
