"""alexnet-export: write a trained model as a SavedModel (TF Serving layout) and TFLite files.

    alexnet-export --workdir=runs/alexnet_shapes-paper
    alexnet-export --workdir=W --export_dir=export/alexnet --tflite=float32,float16,dynamic,int8 --onnx
"""

import importlib.util

from absl import flags

from tools import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The alexnet-train workdir to export from.", required=True)
flags.DEFINE_string("checkpoint", None, "A checkpoint path (default: the workdir's latest).")
flags.DEFINE_string("export_dir", "export/alexnet", "The SavedModel goes to <export_dir>/<version>/.")
flags.DEFINE_integer("version", None, "Version folder (default: one more than the highest present).",
                     lower_bound=1)
flags.DEFINE_list("tflite", [], "TFLite variants to write beside the SavedModel, any of "
                  "float32,float16,dynamic,int8 (int8 is calibrated on training images).")
flags.DEFINE_integer("calibration_images", 100, "Training images for int8 calibration.", lower_bound=1)
flags.DEFINE_boolean("onnx", False, "Also write <export_dir>/alexnet_v<version>.onnx for ONNX Runtime, converted "
                     "from the SavedModel's 'preprocessed' signature by tf2onnx (pip install 'alexnet_tf[onnx]'): "
                     "preprocessed float32 NHWC images in, probabilities and the top 5 out.")


def main(argv):
    if len(argv) > 1:
        cli.error("alexnet-export", f"unexpected arguments: {' '.join(argv[1:])}")
        return 2
    cli.start_tensorflow()
    from alexnet_tf import export

    unknown = [k for k in FLAGS.tflite if k not in export.TFLITE_KINDS]
    if unknown:
        cli.error("alexnet-export", f"--tflite: unknown kind(s) {','.join(unknown)}; choose from "
                                    f"{','.join(export.TFLITE_KINDS)}")
        return 2
    try:
        cli.check_folder("export_dir", FLAGS.export_dir)
        model, config, class_names = export.load_trained(FLAGS.workdir, FLAGS.checkpoint)
        if FLAGS.onnx and importlib.util.find_spec("tf2onnx") is None:  # before anything is written
            raise export.ExportError("--onnx needs tf2onnx: pip install 'alexnet_tf[onnx]' (or pip install tf2onnx)")
        path = export.export_savedmodel(model, class_names, config, FLAGS.export_dir, FLAGS.version)
        print(f"SavedModel: {path}")
        calibration = None
        for kind in FLAGS.tflite:
            if kind == "int8" and calibration is None:
                calibration = export.representative_images(config, FLAGS.calibration_images)
            flatbuffer = export.export_tflite(model, kind, representative_images=calibration)
            out = export.write_tflite(flatbuffer, path.parent / f"alexnet_v{path.name}_{kind}.tflite", path)
            print(f"TFLite {kind}: {out} ({len(flatbuffer) / 2**20:.1f} MiB)")
        if FLAGS.onnx:
            print(f"ONNX: {export.export_onnx(path, path.parent / f'alexnet_v{path.name}.onnx')}")
    except (export.ExportError, ValueError) as e:
        cli.error("alexnet-export", e)
        return 1
    return 0


def run():
    cli.run(main, "alexnet-export")


if __name__ == "__main__":
    run()
