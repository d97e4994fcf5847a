"""`alexnet_shapes`: the embedded offline dataset, a TFDS builder generated on the machine.

Needs no download and no files from the user: `tfds.load("alexnet_shapes")`
(after `import alexnet_tf.datasets`) renders the images deterministically,
stores them as JPEG in TFDS's usual record files, and from then on loads like
any other TFDS dataset. See `shapes_render` for what the images show.
"""

import tensorflow_datasets as tfds

from alexnet_tf.datasets import shapes_render

NUM_EXAMPLES = {"train": 2600, "validation": 500}


class AlexnetShapes(tfds.core.GeneratorBasedBuilder):
    """Ten classes of rendered shapes and textures, 256x256 JPEG."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Ten classes, 2600 training and 500 validation images."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(shapes_render.SIZE, shapes_render.SIZE, 3),
                                             encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=shapes_render.CLASS_NAMES),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split, n) for split, n in NUM_EXAMPLES.items()}

    def _generate_examples(self, split, count):
        for index in range(count):
            image, label = shapes_render.render(split, index)
            yield index, {"image": image, "label": label}
