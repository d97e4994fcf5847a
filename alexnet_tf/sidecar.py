"""What an exported model expects of its input and names its outputs by, stored beside it: alexnet-export
writes it (in a SavedModel's assets/alexnet_tf.json, and as a .tflite's or .onnx's `<file>.json`), and
alexnet-predict reads it back, so a model file and its preprocessing never part."""

import dataclasses

from alexnet_tf.preprocessing import decode_center_256, eval_view


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What an exported model expects of its input and names its outputs by: the evaluation preprocessing's
    sizes and mean, and the class names. alexnet-export stores it beside each model (`to_json`), and
    alexnet-predict reads it back (`from_json`)."""
    image_size: int
    resize: int
    mean: tuple
    class_names: tuple

    def view(self, image_bytes, ten_crop=False):
        """The model's input for one encoded image: its central square, then the centre crop or ten views."""
        return eval_view(decode_center_256(image_bytes, self.resize), crop=self.image_size, mean=self.mean,
                         ten_crop=ten_crop)

    def to_json(self):
        return {"image_size": self.image_size, "resize": self.resize, "mean": list(self.mean),
                "num_classes": len(self.class_names), "class_names": list(self.class_names)}

    @classmethod
    def from_json(cls, meta, class_names=None):
        """From `to_json`'s dict; a KeyError names a missing field."""
        return cls(image_size=int(meta["image_size"]), resize=int(meta["resize"]), mean=tuple(meta["mean"]),
                   class_names=tuple(class_names if class_names is not None else meta["class_names"]))
