"""alexnet-export: write a trained model as a SavedModel (TF Serving layout) and TFLite files.

    alexnet-export --workdir=runs/alexnet_shapes-paper
    alexnet-export --workdir=W --export_dir=export/alexnet --tflite=float32,float16,dynamic,int8 --onnx
"""

import importlib.util

from absl import flags

from tools import cli

FLAGS = cli.flag_values()
flags.DEFINE_string("workdir", None, "The alexnet-train workdir to export from.", required=True, flag_values=FLAGS)
flags.DEFINE_string("checkpoint", None, "A checkpoint path (default: the workdir's latest).", flag_values=FLAGS)
flags.DEFINE_string("export_dir", "export/alexnet", "The SavedModel goes to <export_dir>/<version>/.",
                    flag_values=FLAGS)
flags.DEFINE_integer("version", None, "Version folder (default: one more than the highest present).",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_list("tflite", [], "TFLite variants to write beside the SavedModel, any of "
                  "float32,float16,dynamic,int8 (int8 is calibrated on training images).", flag_values=FLAGS)
flags.DEFINE_integer("calibration_images", 100, "Training images for int8 calibration.", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_boolean("onnx", False, "Also write <export_dir>/alexnet_v<version>.onnx for ONNX Runtime, converted "
                     "from the SavedModel's 'preprocessed' signature by tf2onnx (pip install 'alexnet_tf[onnx]'): "
                     "preprocessed float32 NHWC images in, probabilities and the top 5 out.", flag_values=FLAGS)


def main(argv):
    return cli.main("alexnet-export", FLAGS, argv, _export, __doc__)


def _export(args):
    if args:
        cli.error("alexnet-export", f"unexpected arguments: {' '.join(args)}")
        return 2
    cli.start_tensorflow(FLAGS)
    import tensorflow as tf

    from alexnet_tf import export, sources

    unknown = [k for k in FLAGS.tflite if k not in export.TFLITE_KINDS]
    if unknown:
        cli.error("alexnet-export", f"--tflite: unknown kind(s) {','.join(unknown)}; choose from "
                                    f"{','.join(export.TFLITE_KINDS)}")
        return 2
    try:
        cli.check_folder("export_dir", FLAGS.export_dir)
        model, run, record = export.load_trained(FLAGS.workdir, FLAGS.checkpoint)
        if FLAGS.onnx and importlib.util.find_spec("tf2onnx") is None:  # before anything is written
            raise export.ExportError("--onnx needs tf2onnx: pip install 'alexnet_tf[onnx]' (or pip install tf2onnx)")
        path = export.export_savedmodel(model, record, FLAGS.export_dir, FLAGS.version)
        print(f"SavedModel: {path}")
        calibration = None
        for kind in FLAGS.tflite:
            if kind == "int8" and calibration is None:
                calibration = export.representative_images(run, FLAGS.calibration_images)
            flatbuffer = export.export_tflite(model, kind, representative_images=calibration)
            out = export.write_tflite(flatbuffer, path.parent / f"alexnet_v{path.name}_{kind}.tflite", record)
            print(f"TFLite {kind}: {out} ({len(flatbuffer) / 2**20:.1f} MiB)")
        if FLAGS.onnx:
            print(f"ONNX: {export.export_onnx(path, path.parent / f'alexnet_v{path.name}.onnx', record)}")
    except (OSError, tf.errors.OpError) as e:  # the folder became unwritable, or the disk failed, mid-export
        return cli.fail("alexnet-export", e, f"--export_dir={FLAGS.export_dir}: writing failed: {sources.reason(e)}")
    return 0


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
