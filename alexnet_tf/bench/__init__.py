"""The measurements behind alexnet-benchmark, each returning plain dicts (or lists of them), and the
performance targets judged from them.

- `timing`: warm-up, repetitions, turns; median and spread.
- `flops`: the FLOPs of the model that is timed, layer by layer; the fraction of a ceiling.
- `probes`: the machine's limits: the fp32 matmul ceiling and a memory read; what machine this is.
- `train`: forward pass, train step (any precision, XLA, fine-tuning's frozen layers).
- `pipeline`: the input pipeline alone (stored JPEGs, jpeg256, raw256; locally and through the tf.data
  service) and training end to end from each.
- `serving`: every exported runtime through `predict.Classifier`, timed in turns, agreement with Keras,
  and the serving floor.
- `memory`: peak resident memory of training, in a fresh process.
- `profile`: a TF profiler trace of the train step, read back per layer and pass.
- `targets`: the targets, met or not, from the measurements; `report`: the table.
"""
