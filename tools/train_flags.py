"""alexnet-train's flags, defined on a tool's own FlagValues (alexnet-study takes them too), and the
TrainConfig they describe (`config_from`)."""

from absl import flags

from alexnet_tf import config as cfg, runs

D, M, E = cfg.TrainConfig, cfg.ModelConfig, cfg.EMBEDDED_RECIPE  # every default below comes from here


def recipe(field):
    return (f" (recipe; paper: {cfg.PAPER_RECIPE[field]}, embedded dataset: {E[field]}; see --init_from for "
            f"fine-tuning)")


def source(default):
    return f" (default: {default}; with --init_from, the source's)"


def _definers(values):
    """Flag definers on `values` whose choices and defaults come from alexnet_tf.config."""
    def string(name, default, text):
        flags.DEFINE_string(name, default, text, flag_values=values)

    def enum(name, default, text):
        flags.DEFINE_enum(name, default, cfg.flag_choices(name), text, flag_values=values)

    def number(kind, name, default, text):
        getattr(flags, f"DEFINE_{kind}")(name, default, text, flag_values=values)

    def boolean(name, text):
        flags.DEFINE_boolean(name, getattr(D, name), text, flag_values=values)

    return string, enum, number, boolean


def define(values):
    """alexnet-train's flags on `values` (alexnet-study defines them too): one per TrainConfig field and
    ModelConfig flag, with choices, bounds and defaults from alexnet_tf.config, plus --export_dir."""
    _data_and_model(values)
    _recipe(values)
    _running(values)


def _data_and_model(values):
    string, enum, number, boolean = _definers(values)
    string("dataset", cfg.EMBEDDED_DATASET, "What to train on: 'alexnet_shapes' (embedded, offline), 'imagenet2012' "
           "(TFDS, from the official tars in <data_dir>/downloads/manual), another TFDS name, 'folder:PATH', or 'prepared:PATH' (written by alexnet-prepare).")
    string("data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets). Dataset "
           "statistics are stored here too.")
    string("workdir", None, "Where checkpoints, TensorBoard logs, config.json and result.json go (default: "
           "runs/<dataset>-<preset>). Rerunning with the same workdir resumes.")
    enum("preset", None, "Model size: 'paper' (227x227, full width) or 'tiny' (67x67, 1/8 width) for smoke runs"
         + source(M.preset) + ".")
    enum("lrn", None, "Local response normalization: 'paper' (the paper's constants, per tower), 'caffe' (Caffe's "
         "bvlc_alexnet: k=1, window across towers) or 'none'" + source(M.lrn) + ".")
    enum("pool", None, "Max-pooling: 'overlapping' (3x3 every 2, the paper's) or 'non_overlapping' (2x2 every 2, "
         "its ablation)" + source(M.pool) + ".")
    number("integer", "towers", None, "2 (the paper's net) or 1 (its one-GPU comparison net: conv1-4 of one "
           "tower's size, conv5 and the FC layers of the whole net's)" + source(M.towers) + ".")
    enum("recipe", None, "Where the paper's text and its 2012 code differ, follow 'paper' (the text) or "
         "'original_code' (layers-145.cfg: conv3-5 init std x3, conv1 normalized before its ReLU, the code's LRN "
         "constants, an extra same-map normalization after conv2, biases at twice the starting rate and never "
         "lowered, and --lr_schedule=original_code unless given)" + source(M.recipe) + ".")


def _recipe(values):
    string, enum, number, boolean = _definers(values)
    boolean("pca_lighting", "Training: the paper's PCA colour augmentation (applied in the train step).")
    boolean("flip", "Training: random horizontal reflections (applied in the train step).")
    string("init_from", None, "Fine-tune: start from this workdir (alexnet-train or alexnet-import) or checkpoint. "
           "Every layer is loaded; fc8 is initialized anew when the class count differs. Only a fresh workdir is "
           f"initialized: rerunning resumes. Uses the fine-tuning recipe (lr {cfg.FINETUNE_RECIPE['lr']:g}, "
           f"{cfg.FINETUNE_RECIPE['epochs']:g} epochs).")
    string("train_layers", D.train_layers, "'all', or the layers to train, e.g. 'fc8' or 'fc6,fc7,fc8'; the others "
           "are frozen (no updates, no momentum, no backward pass below the lowest trained layer). Layers: "
           f"{','.join(cfg.WEIGHT_LAYERS)}.")
    number("integer", "batch_size", None, "Global batch size over all replicas" + recipe("batch_size"))
    number("float", "epochs", None, "Epochs to train" + recipe("epochs"))
    number("integer", "steps", None, "Train this many steps in total; overrides --epochs.")
    number("float", "lr", None, "Initial learning rate" + recipe("lr"))
    number("integer", "warmup_steps", None, "Ramp the learning rate linearly up to --lr over this many steps"
           + recipe("warmup_steps"))
    number("float", "momentum", D.momentum, "Momentum of SGD, in [0, 1).")
    number("float", "weight_decay", D.weight_decay, "L2 penalty weight_decay/2 * sum(w^2) over kernels (the "
           "paper's rule).")
    number("float", "dropout", M.dropout, "Dropout rate after fc6 and fc7, in [0, 1).")
    enum("lr_schedule", None, "'plateau': divide the rate by 10 when validation top-1 error stops improving for "
         "--patience evaluations (the paper's); 'step': divide by 10 every --step_epochs epochs; 'original_code': "
         "the 2012 run's calendar stretched to this run (/10 at epochs 25, 51, 79 of 90; conv1 slowed at 67 and "
         "stopped at 72; colour noise off from 67)" + recipe("lr_schedule"))
    number("integer", "patience", D.patience, "Plateau schedule: evaluations without improvement before a drop.")
    number("float", "step_epochs", None, "Step schedule: epochs between drops" + recipe("step_epochs"))
    number("integer", "max_drops", D.max_drops, "Divide the learning rate at most this many times.")


def _running(values):
    string, enum, number, boolean = _definers(values)
    number("integer", "eval_every", None, "Evaluate on the validation split every N steps" + recipe("eval_every"))
    number("integer", "ckpt_every", None, "Checkpoint every N steps (default: at every evaluation).")
    number("integer", "log_every", D.log_every, "Write training scalars to TensorBoard every N steps.")
    boolean("ten_crop", "Evaluate with the paper's 10 views (corners, centre, mirrors) averaged.")
    flags.DEFINE_list("tower_devices", None, "Devices of tower a and tower b, e.g. /GPU:0,/GPU:1 (default: one "
                      "tower per GPU with two or more GPUs, else TensorFlow's placement).", flag_values=values)
    enum("strategy", D.strategy, "Data parallelism: 'mirrored' over this machine's devices, 'multi_worker' across "
         "machines (configured by TF_CONFIG). multi_worker with --tower_devices is the hybrid scheme: one replica "
         "per machine, its towers on these devices, gradients all-reduced across machines.")
    number("float", "cluster_timeout", D.cluster_timeout, "--strategy=multi_worker: seconds to wait for every "
           "worker in TF_CONFIG to start before giving up, naming the ones that never answered.")
    number("integer", "cpu_devices", D.cpu_devices, "Split the host CPU into this many logical devices /CPU:0 ... "
           "before anything else runs, to try tower placement without GPUs, e.g. --cpu_devices=2 "
           "--tower_devices=/CPU:0,/CPU:1 (they share the same cores: for seeing placement, not speed).")
    enum("mixed_precision", D.mixed_precision, "Compute precision; LRN always runs in float32. mixed_float16 uses "
         "dynamic loss scaling.")
    boolean("jit", "Compile the train step with XLA.")
    number("integer", "seed", D.seed, "Seed for initialization, dropout, shuffling and augmentation.")
    boolean("deterministic", "Read the input in a reproducible order: the same --seed gives the same batches "
            "and the same crops, flips and colour shifts (the input is slower).")
    number("integer", "max_eval_images", D.max_eval_images, "Evaluate on at most this many validation images.")
    number("integer", "max_pixels", D.max_pixels, "Refuse (skip, with a line naming it) any image whose header says "
           "it has more pixels than this, before decoding it: a guard against decompression bombs.")
    string("data_service", None, "grpc://HOST:PORT of a tf.data service dispatcher (alexnet-data-service): the "
           "training pipeline's host side (read, decode, batch uint8 squares) runs on its workers, each epoch's "
           "images split among them; the augmentation stays in this trainer's step, evaluation here too. "
           "Default: all input runs in this process.")
    number("float", "data_service_timeout", D.data_service_timeout, "Seconds to wait for --data_service's "
           "dispatcher to answer at start-up, and for a batch from its workers while training (said after 10 s), "
           "before stopping in one line, the training so far checkpointed.")
    string("export_dir", "export/alexnet", "After training, export a SavedModel to <export_dir>/<version>/ (when "
           "this run trained, or nothing was exported yet); empty to skip.")


def config_from(values):
    """The TrainConfig the flags describe, checked (before TensorFlow starts); ValueError naming a bad flag."""
    fields = set(cfg.TrainConfig.__dataclass_fields__) | set(cfg.MODEL_FLAGS)
    config = runs.make_config(**{name: values[name].value for name in fields if name in values})
    config.check()
    return config
