"""Timing: untimed warm-up calls, timed repetitions, functions that take turns; median and spread."""

import statistics
import time


def time_calls(fns, *, warmup=2, repeats=5, rounds=1):
    """Seconds per call of each function of `fns` (name -> function): median, min and max over `repeats`
    timed calls, by name.

    The calls come in `rounds` rounds. In each, every function takes a turn: `warmup` untimed calls, then its
    share of the timed ones. Rounds spread each function's timed calls over the whole measurement, so a slow
    spell of a shared machine falls on all of them alike and their ratios hold; the untimed calls let the
    runtime that went before settle (after a turn of ONNX Runtime, the SavedModel's next few calls ran up to
    1.5x slower: BUILD_NOTES.md, "Serving speed"). Each function must block until its work is done (return a
    NumPy value, or call `.numpy()` on the result), or the timing measures only dispatch.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not 1 <= rounds <= repeats:
        raise ValueError(f"rounds must be from 1 to repeats ({repeats}), got {rounds}")
    times = {name: [] for name in fns}
    for turn in range(rounds):
        share = repeats // rounds + (turn < repeats % rounds)
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(share):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "repeats": repeats}
            for name, t in times.items()}


def time_call(fn, *, warmup=2, repeats=5):
    """Seconds per call of `fn()`: `time_calls` of one function."""
    return time_calls({"fn": fn}, warmup=warmup, repeats=repeats)["fn"]
