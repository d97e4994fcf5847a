"""One source of configuration: the presets, every choice list, `ModelConfig` (what shapes the network),
`TrainConfig` (a whole run, its `ModelConfig` inside) and the recipes. `alexnet_tf.runs` makes a
TrainConfig from flat values (`make_config`) and keeps a run's record, config.json, in its workdir.

Importing it does not import TensorFlow, so the tools can check their flags (which take their defaults and
choices from here) before TensorFlow starts.

`TrainConfig`'s defaults are the paper's recipe. A recipe replaces some of them for one kind of run: the
embedded dataset's is sized to finish in minutes on a 2-core CPU (BUILD_NOTES.md says how it was chosen).
`runs.make_config` fills every field left as None from the recipe, then from the paper.
"""

import dataclasses
import math
import re
from pathlib import Path

EMBEDDED_DATASET = "alexnet_shapes"
# Images with more pixels are refused before they are decoded: a 1 MB PNG can hold 20000x20000 pixels
# (1.6 GB decoded). Pillow's own decompression-bomb threshold; ImageNet's largest images are ~20 MP.
MAX_PIXELS = 89_478_485

PRESETS = {
    # The paper's model on 227x227 crops of 256x256 images.
    "paper": dict(width=1.0, image_size=227, resize=256, init_std=0.01),
    # The same topology at 1/8 width on 67x67 crops of 76x76 images, for smoke runs and tests. Every fan-in
    # is 8x smaller, so the init std is scaled by sqrt(8) to give each layer the paper model's activation
    # statistics (at 0.01 the narrow model's signal drowns in the biases of 1).
    "tiny": dict(width=0.125, image_size=67, resize=76, init_std=0.01 / 0.125 ** 0.5),
}
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SCHEDULES = ("plateau", "step", "original_code")
# What the run follows where the paper's text and its 2012 code differ: "paper" (the text) or
# "original_code" (alexnet_tf.model builds its net; alexnet_tf.optim has its optimizer and schedule).
RECIPES = ("paper", "original_code")
# "paper" (per tower), "caffe" (bvlc_alexnet's, across the towers) or None; constants in alexnet_tf.model.
LRN_CHOICES = ("paper", "caffe", None)
# Max-pooling after conv1, conv2 and conv5 (Section 3.4), as (window, stride): the paper's overlapping 3x3
# windows every 2 pixels, or its comparison, 2x2 every 2 (the maps stay 55/27/13/6).
POOLS = {"overlapping": (3, 2), "non_overlapping": (2, 2)}
TOWER_COUNTS = (2, 1)  # the paper's net, or its one-GPU comparison net
# The weight layers, in forward order; `train_layers` names them (each stands for both towers' halves).
WEIGHT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def flag_choices(field):
    """The values a tool's enum flag for `field` accepts (None is spelled 'none')."""
    choices = {"preset": PRESETS, "lrn": LRN_CHOICES, "pool": POOLS, "recipe": RECIPES, "lr_schedule": SCHEDULES,
               "strategy": STRATEGIES, "mixed_precision": PRECISIONS}[field]
    return ["none" if c is None else c for c in choices]


def _bad(owner, field, want):
    raise ValueError(f"{field}={getattr(owner, field)!r}: {want}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every setting that shapes the network: what `alexnet_tf.model.from_config` builds and a workdir records.

    The sizes come from `preset` (`ModelConfig.of_preset`); `num_classes=None` means the dataset's."""
    preset: str = "paper"
    width: float = 1.0
    image_size: int = 227
    resize: int = 256
    init_std: float = 0.01
    num_classes: int | None = None
    lrn: str | None = "paper"        # "paper", "caffe" (imported bvlc_alexnet weights) or None
    pool: str = "overlapping"        # or "non_overlapping" (the paper's pooling ablation)
    towers: int = 2                  # or 1: the paper's one-GPU comparison net
    recipe: str = "paper"            # or "original_code": what the 2012 code did where it differs from the text
    dropout: float = 0.5

    @classmethod
    def of_preset(cls, preset="paper", **fields):
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r}: must be one of {', '.join(PRESETS)}")
        return cls(preset=preset, **PRESETS[preset], **fields)

    def check(self):
        """Raises ValueError naming the first bad field as `field=value: why`."""
        if self.preset not in PRESETS:
            _bad(self, "preset", f"must be one of {', '.join(PRESETS)}")
        if self.lrn not in LRN_CHOICES:
            _bad(self, "lrn", "must be paper, caffe or none")
        if self.pool not in POOLS:
            _bad(self, "pool", f"must be one of {', '.join(POOLS)}")
        if self.towers not in TOWER_COUNTS:
            _bad(self, "towers", "must be 2 (the paper's net) or 1 (its one-GPU comparison net)")
        if self.recipe not in RECIPES:
            _bad(self, "recipe", f"must be one of {', '.join(RECIPES)}")
        if self.recipe == "original_code" and self.lrn == "caffe":
            _bad(self, "lrn", "cannot be combined with recipe=original_code, which has the 2012 code's own LRN; "
                              "use paper or none")
        if not 0 <= self.dropout < 1:
            _bad(self, "dropout", "must be in [0, 1)")
        if self.num_classes is not None and self.num_classes < 1:
            _bad(self, "num_classes", "must be >= 1")


# The TrainConfig fields that are set from flags of the same name, and their bounds (check() says why).
AT_LEAST_1 = ("batch_size", "log_every", "patience")
NONE_OR_AT_LEAST_1 = ("steps", "eval_every", "ckpt_every", "max_eval_images", "max_pixels", "cpu_devices")
FINITE_POSITIVE = ("epochs", "lr", "step_epochs")


@dataclasses.dataclass
class TrainConfig:
    dataset: str = EMBEDDED_DATASET
    data_dir: str | None = None
    workdir: str = "runs/alexnet"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pca_lighting: bool = True        # the paper's colour augmentation (Section 4.1)
    flip: bool = True                # random horizontal reflections (Section 4.1)
    init_from: str | None = None     # fine-tune: a workdir or checkpoint to start from
    train_layers: str = "all"        # "all", or the layers to train, e.g. "fc6,fc7,fc8"; the rest stay frozen
    batch_size: int = 128            # global, over all replicas
    epochs: float = 90
    steps: int | None = None         # overrides epochs
    lr: float = 0.01
    warmup_steps: int = 0            # linear ramp to lr over the first steps (0: the paper's constant start)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "plateau"     # "original_code": the 2012 run's calendar, scaled to this run's length
    patience: int = 3                # plateau: evaluations without improvement before a drop
    step_epochs: float = 30          # step: epochs between drops
    max_drops: int = 3
    eval_every: int | None = None    # steps; None = once per epoch
    ckpt_every: int | None = None    # steps; None = at every evaluation
    log_every: int = 10
    ten_crop: bool = False
    tower_devices: tuple | None = None
    strategy: str = "default"
    cpu_devices: int | None = None   # split the host CPU into this many logical devices (to try placement)
    mixed_precision: str = "float32"
    jit: bool = False
    seed: int = 0
    deterministic: bool = False      # reproducible input order (slower)
    val_fraction: float = 0.05       # for datasets without a validation split
    max_eval_images: int | None = None
    max_pixels: int = MAX_PIXELS     # larger images are refused unread
    data_service: str | None = None  # grpc://HOST:PORT of a tf.data service dispatcher: training input runs there
    data_service_timeout: float = 60  # seconds to wait for that dispatcher at start-up, and for a batch
    cluster_timeout: float = 300     # multi_worker: seconds to wait for every worker in TF_CONFIG to start

    @property
    def hybrid(self):
        """The paper's towers on this worker's devices, data parallel across workers (cuda-convnet2's scheme)."""
        return self.strategy == "multi_worker" and self.tower_devices is not None

    @property
    def trained_layers(self):
        """The weight layers this run updates, in forward order."""
        if self.train_layers == "all":
            return WEIGHT_LAYERS
        names = {n.strip() for n in self.train_layers.split(",")}
        return tuple(n for n in WEIGHT_LAYERS if n in names)

    def check(self):
        """Raises ValueError naming the first bad field as `field=value: why`."""
        self.model.check()
        for field, choices in (("strategy", STRATEGIES), ("mixed_precision", PRECISIONS),
                               ("lr_schedule", SCHEDULES)):
            if getattr(self, field) not in choices:
                _bad(self, field, f"must be one of {', '.join(choices)}")
        if self.train_layers != "all":
            unknown = sorted({n.strip() for n in self.train_layers.split(",")} - set(WEIGHT_LAYERS))
            if unknown or not self.train_layers.strip():
                _bad(self, "train_layers", f"must be 'all' or a comma-separated list of {', '.join(WEIGHT_LAYERS)}")
        if self.warmup_steps < 0:
            _bad(self, "warmup_steps", "must be >= 0")
        for field in AT_LEAST_1 + NONE_OR_AT_LEAST_1:
            value = getattr(self, field)
            if (value is not None or field in AT_LEAST_1) and value < 1:
                _bad(self, field, "must be >= 1")
        for field in FINITE_POSITIVE:
            if not (getattr(self, field) > 0 and math.isfinite(getattr(self, field))):
                _bad(self, field, "must be a finite number > 0")
        if not 0 <= self.momentum < 1:
            _bad(self, "momentum", "must be in [0, 1)")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            _bad(self, "weight_decay", "must be a finite number >= 0")
        if self.max_drops < 0:
            _bad(self, "max_drops", "must be >= 0")
        for field in ("workdir", "data_dir"):
            path = getattr(self, field)
            if path and Path(path).exists() and not Path(path).is_dir():
                raise ValueError(f"{field}={path}: is a file, not a folder")
        if self.data_service is not None and not re.fullmatch(r"grpc://[^/:\s]+:\d{1,5}", self.data_service):
            _bad(self, "data_service", "must be grpc://HOST:PORT, the address alexnet-data-service --dispatcher "
                                       "printed")
        for field in ("data_service_timeout", "cluster_timeout"):
            if not (getattr(self, field) > 0 and math.isfinite(getattr(self, field))):
                _bad(self, field, "must be a finite number of seconds > 0")
        if self.tower_devices is not None and len(self.tower_devices) != 2:
            _bad(self, "tower_devices", "needs two devices (tower a, tower b)")
        if self.tower_devices is not None and self.strategy == "mirrored":
            _bad(self, "tower_devices", "cannot be combined with strategy=mirrored, which makes every local device a "
                                        "replica of the whole net; use strategy=multi_worker (one replica per "
                                        "machine, its towers on these devices) or the default strategy")


# ModelConfig fields a flag of the same name sets (the sizes follow --preset; the classes, the dataset).
MODEL_FLAGS = ("preset", "lrn", "pool", "towers", "recipe", "dropout")

# ----------------------------------------------------------------------------
# Recipes: the defaults that depend on what is trained
# ----------------------------------------------------------------------------

# The fields a recipe may set; every other default is TrainConfig's (the paper's).
RECIPE_FIELDS = ("batch_size", "epochs", "lr", "warmup_steps", "lr_schedule", "step_epochs", "eval_every")
PAPER_RECIPE = {f: TrainConfig.__dataclass_fields__[f].default for f in RECIPE_FIELDS}
# Measured (BUILD_NOTES.md): a 100-step warm-up gets the paper's init out of its plateau within the
# budget; at the paper's lr of 0.01 this easy 10-class data then blew up in two of three runs, so the peak
# is 0.005, divided by 10 on a fixed calendar (the plateau rule reacts too late at this run length).
EMBEDDED_RECIPE = {**PAPER_RECIPE, "epochs": 17, "eval_every": 40, "warmup_steps": 100, "lr": 0.005,
                   "lr_schedule": "step", "step_epochs": 12}
# Fine-tuning (`init_from`): the features are trained already, so a tenth of the paper's rate and a short
# schedule; measured on the embedded dataset (BUILD_NOTES.md, "Fine-tuning").
FINETUNE_RECIPE = {**PAPER_RECIPE, "lr": 0.001, "epochs": 10, "lr_schedule": "step", "step_epochs": 6,
                   "warmup_steps": 0}


# `prepared:PATH` names a dataset alexnet-prepare wrote (alexnet_tf.prepared); its record says what from.
PREPARED_PREFIX = "prepared:"
PREPARED_RECORD = "alexnet_tf_prepared.json"


def recipe_defaults(dataset, init_from=None):
    """The recipe's values of RECIPE_FIELDS for training on `dataset` (fine-tuning with `init_from`). A
    prepared dataset's caller passes the dataset it was prepared from (`runs.prepared_source`), whose recipe
    it trains with."""
    if init_from:
        return dict(FINETUNE_RECIPE)
    return dict(EMBEDDED_RECIPE if dataset == EMBEDDED_DATASET else PAPER_RECIPE)


def slug(name):
    """A dataset name as a folder name: 'folder:/data/x' -> 'folder_data_x'."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name).strip("_").replace("__", "_")


def default_workdir(dataset, preset):
    return f"runs/{slug(dataset)}-{preset}"
