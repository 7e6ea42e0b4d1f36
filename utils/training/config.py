"""Every training setting, once: the TrainConfig dataclass.

Its defaults are the seed's recipe. An experiment file (configs/<name>.py, chosen with
--preset NAME or --config FILE) lists only what differs from them; train_classifier.py's
flags are generated from the fields below (utils.core.cli.add_field_flags: each field's help
and allowed values) and override the file. The effective config is written to the run
directory's config.json. Importing this module loads no Keras: the allowed values are plain
data (models.names).
"""
from __future__ import annotations

import difflib
import runpy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from models.names import CLASSIFIER_INIT_NAMES, LOSS_NAMES, MODEL_NAMES, NORMALIZATION_NAMES
from utils.core.errors import IcyfaceError
from utils.core.run_io import PROJECT_ROOT

CONFIGS_DIR = PROJECT_ROOT / "configs"
DEFAULT_PRESET = "seed"
SCHEDULES = ("step", "cosine")  # utils.training.schedule's kinds
# Old spellings (config files, config.json of older runs, and flags: --L2, --image-size...) -> today's names.
RENAMED = {"image_size": "input_size", "hidden_size": "embedding_size", "L2": "weight_decay", "datadir": "data_dir"}
# Where runs live, how chatty they are and whether LFW is watched do not change the model,
# so a resumed run may change them.
TRANSIENT = ("verbose", "runs_dir", "lfw_dir", "lfw_pairs", "val_targets", "lfw_every", "lfw_cache_dir",
             "backup_every_steps")


class TrainingError(IcyfaceError):
    """The run cannot start or go on as asked (bad data, bad flags, a finished run, an
    unreadable backup, a run directory that cannot be written)."""


def _setting(default, help: str, choices: tuple = ()):
    """A field with its --help text and allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    # What is trained, on what.
    net_type: str = _setting("res-cp", "backbone", choices=MODEL_NAMES)
    data_dir: str = _setting("", "crops folder from preprocess_data.py (default: the CASIA-WebFace crops made "
                                 "with --align / --crop-size)")
    align: str = _setting("margin", "the preprocess_data.py --align mode this recipe expects its crops made with",
                          choices=("margin", "similarity", "affine", "part", "parts", "none"))
    crop_size: int = _setting(182, "the crop side in px this recipe expects (preprocess_data.py --crop-size)")
    part: int = _setting(0, "with align 'part': which of the seed's face-part crop sets the recipe expects (0: the eye "
                            "on the image's left, 1: the other eye, 2: the nose tip; preprocess_data.py --align parts "
                            "writes all three)")
    input_size: int = _setting(64, "network input px (crops are resized to it)")
    embedding_size: int | None = _setting(None, "embedding size (default: the model's, 160 for res-cp)")
    normalization: str = _setting("unit", "how the model scales raw pixels: unit = x / 255 (the seed), "
                                          "centered = (x - 127.5) / 128", choices=NORMALIZATION_NAMES)
    # The objective.
    loss: str = _setting("softmax", "softmax, center (softmax + center loss), arcface, cosface, triplet "
                                    "(semi-hard, k images per identity per batch), distill (no label term: "
                                    "--teacher's alone)", choices=LOSS_NAMES)
    classifier_init: str = _setting("tflearn", "softmax layer's initial weights: tflearn = truncated normal, "
                                               "stddev 0.02 (the seed)", choices=CLASSIFIER_INIT_NAMES)
    margin_scale: float = _setting(64.0, "ArcFace/CosFace scale s")
    margin_m: float = _setting(0.5, "ArcFace angular margin (radians) / CosFace cosine margin")
    label_smoothing: float = _setting(0.0, "softmax losses: target 1 - e on the true class, e spread over all "
                                           "classes (0 = off)")
    center_weight: float = _setting(0.01, "center-loss weight (--loss center)")
    triplet_margin: float = _setting(0.2, "triplet loss margin (--loss triplet)")
    images_per_identity: int = _setting(4, "k images per identity per triplet batch")
    teacher: str = _setting("", "distil a teacher's embeddings: dlib (the ResNet face_recognition_models ships), a "
                                "run directory, or an .onnx embedding model taking uint8 RGB crops (default: off; "
                                "docs/distillation.md)")
    distill_weight: float = _setting(30.0, "with --teacher: weight of the distillation term 1 - cos(student, "
                                           "teacher), added to --loss's")
    # Optimisation.
    epochs: int = _setting(20, "epochs to train")
    batch_size: int = _setting(32, "global batch size (split over GPUs)")
    lr: float = _setting(0.01, "base learning rate (SGD with momentum)")
    momentum: float = _setting(0.9, "SGD momentum")
    schedule: str = _setting("step", "step: x0.1 every --decay-step epochs; cosine: to zero", choices=SCHEDULES)
    decay_step: int = _setting(10, "epochs between x0.1 steps (step schedule)")
    warmup_epochs: int = _setting(0, "linear learning-rate warm-up epochs")
    weight_decay: float = _setting(5e-5, "L2 penalty weight_decay * sum(w^2) on conv/dense kernels (res-cp: on "
                                         "its residual convs only, as the seed; tflearn's weight_decay w is w / 2 "
                                         "here: the seed's 1e-4 is 5e-5)")
    ema: float = _setting(0.0, "keep an exponential moving average of the weights, this momentum per step; "
                               "holdout, checkpoints, LFW checks and the export use it (0 = off)")
    # Data: which images, which holdout, which augmentation.
    img_morethan: int = _setting(20, "keep identities with strictly more than this many images (the seed's rule)")
    exclude_identities: str = _setting("", "file of identities to leave out, one per line: folder names (or pack "
                                           "labels); e.g. those also in LFW, from "
                                           "python -m utils.preprocess.identity_overlap")
    val_split: float = _setting(0.1, "holdout fraction for top-1/top-5 accuracy (see --split)")
    split: str = _setting("seed", "holdout: seed = sklearn train_test_split over all images (random_state = "
                                  "--seed), stratified = the same fraction of every identity",
                          choices=("seed", "stratified"))
    seed: int = _setting(0, "seed for split, data order and initialisation")
    flip: bool = _setting(False, "random horizontal flips")
    crop_jitter: float = _setting(0.0, "random crop keeping >= (1 - jitter) of the side, resized back")
    brightness: float = _setting(0.0, "random brightness shift, max in pixel units")
    contrast: float = _setting(0.0, "random contrast factor in [1 - c, 1 + c]")
    resized_crop: float = _setting(0.0, "random resized crop: a box of [1 - r, 1] of the area, aspect 3/4..4/3, "
                                        "resized back (0 = off)")
    saturation: float = _setting(0.0, "random saturation factor in [1 - s, 1 + s]")
    greyscale: float = _setting(0.0, "probability of a greyscale copy")
    downscale: float = _setting(0.0, "probability of shrinking to [--downscale-min, 1] of the side and back "
                                     "(a softer, lower-resolution photo)")
    downscale_min: float = _setting(0.35, "smallest side factor for --downscale")
    erasing: float = _setting(0.0, "probability of one mid-grey box covering 2-25 percent of the area (random erasing)")
    cache: str = _setting("", "cache decoded images: 'ram' or a file prefix (default: none); the images then come in "
                                  "another (seeded) order")
    # Compute.
    mixed_precision: bool = _setting(False, "float16 compute (GPU)")
    bfloat16: bool = _setting(False, "mixed bfloat16 compute, for a CPU whose lscpu lists amx_bf16: there res-cp@64 "
                                     "trains 1.34x as fast as float32 but MobileFaceNet@80 0.78x "
                                     "(benchmarks/precision_speed.py); without AMX it is emulated and slow")
    jit: bool = _setting(False, "XLA-compile the train step (on the 2-core CPUs here it trains at 0.18-0.45x "
                                     "the float32 speed, benchmarks/precision_speed.py; untested on a GPU)")
    # Where the run goes and what it reports (TRANSIENT: a resumed run may change these).
    name: str = _setting("", "run name, one folder name: <runs-dir>/<name>/ (default <net_type>-<preset>)")
    preset: str = _setting(DEFAULT_PRESET, "the experiment these settings came from (set by --preset / --config)")
    runs_dir: str = _setting("runs", "parent folder of run directories")
    verbose: int = _setting(2, "Keras progress: 1 = progress bar, 2 = one line per epoch", choices=(0, 1, 2))
    lfw_dir: str = _setting("", "raw LFW images: verify on LFW during training (default: off)")
    lfw_pairs: str = _setting("", "pairs file for --lfw-dir (default <lfw-dir>/pairs.txt)")
    val_targets: str = _setting("", "more pair sets verified with LFW, comma-separated: insightface .bin files "
                                    "(cfp_fp.bin,agedb_30.bin) or pair lists over --lfw-dir; each logged as "
                                    "<name>_accuracy")
    lfw_every: int = _setting(1, "epochs between LFW verifications")
    lfw_cache_dir: str = _setting("data", "where the aligned LFW copy is cached")
    backup_every_steps: int = _setting(1000, "also back up mid-epoch every this many steps, so a kill -9 loses at "
                                             "most that many (0 = at epoch ends only; SIGTERM/SIGINT always save "
                                             "the step they stop at)")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    @property
    def compute_policy(self) -> str:
        """The Keras dtype policy the network trains under."""
        return "mixed_float16" if self.mixed_precision else "mixed_bfloat16" if self.bfloat16 else "float32"

    def recipe(self) -> dict:
        """The settings that define the run; a resumed run must match them."""
        return {k: v for k, v in asdict(self).items() if k not in TRANSIENT}

    def settings_for(self, names) -> dict:
        """The named settings as keyword arguments (e.g. those a loss declares)."""
        return {n: getattr(self, n) for n in names}


FIELDS = {f.name: f for f in fields(TrainConfig)}


def allowed_values(name: str) -> tuple:
    """A field's allowed values (empty: any value of its type)."""
    return FIELDS[name].metadata["choices"]


def _closest(key: str) -> str:
    match = difflib.get_close_matches(key, list(FIELDS) + list(RENAMED), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(FIELDS)}"


def canonical_key(key: str, where: str) -> str:
    """Today's name of a setting (old spellings accepted); an unknown key names the closest one."""
    key = RENAMED.get(key, key)
    if key not in FIELDS:
        raise TrainingError(f"{where}: unknown setting {key!r}{_closest(key)}")
    return key


def _check_value(key: str, value, where: str):
    """Types as the dataclass declares them; an int is a fine float, None only where allowed."""
    declared = FIELDS[key].type
    kinds = {"str": str, "int": int, "float": (int, float), "bool": bool, "int | None": (int, type(None))}[declared]
    if isinstance(value, bool) and declared != "bool" or not isinstance(value, kinds):
        raise TrainingError(f"{where}: {key} = {value!r} should be {declared}")
    choices = allowed_values(key)
    if choices and value not in choices:
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        raise TrainingError(f"{where}: {key} = {value!r} is not one of {', '.join(map(str, choices))}"
                            + (f"; did you mean {hint[0]!r}?" if hint else ""))


# Values with two spellings: preprocess_data.py --align parts writes the part crops one recipe trains on.
VALUE_ALIASES = {("align", "parts"): "part"}


def checked_settings(values: dict, where: str) -> dict:
    """values with today's key names, every key and value checked; ints given for floats become floats."""
    out = {}
    for key, value in values.items():
        key = canonical_key(key, where)
        _check_value(key, value, where)
        value = VALUE_ALIASES.get((key, value), value) if isinstance(value, str) else value
        out[key] = float(value) if FIELDS[key].type == "float" else value
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.name.startswith("_"))


def experiment_purpose(path: Path) -> str:
    """What an experiment file is for: the first line of its docstring ('' without one)."""
    import ast

    try:
        doc = ast.get_docstring(ast.parse(Path(path).read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""


def experiment_path(preset: str | None = None, config_file: str | Path | None = None) -> Path:
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise TrainingError(f"--config {path}: no such file")
        return path
    name = preset or DEFAULT_PRESET
    path = CONFIGS_DIR / f"{name.replace('-', '_')}.py"
    if not path.is_file():
        hint = difflib.get_close_matches(name, preset_names(), n=1)
        raise TrainingError(f"no experiment {name!r} in {CONFIGS_DIR}; choose one of {', '.join(preset_names())}"
                            + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return path


def read_experiment(path: Path) -> dict:
    """The settings an experiment file assigns (public module-level names), checked."""
    try:
        namespace = runpy.run_path(str(path))
    except Exception as err:  # a syntax error or a failing import in the user's file
        raise TrainingError(f"cannot read the experiment file {path}: {type(err).__name__}: {err}") from None
    values = {k: v for k, v in namespace.items() if not k.startswith("_") and not callable(v)
              and type(v).__name__ != "module"}
    return checked_settings(values, str(path))


def load_config(preset: str | None = None, config_file: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults < the experiment file < overrides. The run name (<net_type>-<preset>) and the
    crops folder (where preprocess_data.py puts the CASIA-WebFace crops the recipe expects) are
    derived when neither the file nor the overrides set them."""
    from utils.preprocess.settings import DEFAULT_INPUT_DIR, default_output_dir

    path = experiment_path(preset, config_file)
    values = {**read_experiment(path), "preset": path.stem, **checked_settings(overrides, "override")}
    config = replace(TrainConfig(), **values)
    derived = {"name": f"{config.net_type}-{config.preset}",
               "data_dir": str(default_output_dir(DEFAULT_INPUT_DIR, expected_align(config)))}
    return replace(config, **{k: v for k, v in derived.items() if k not in values})


def expected_align(config: TrainConfig):
    """The alignment the recipe's crops should have been made with."""
    from utils.preprocess.face_alignment import DEFAULT_PART_MARGIN, AlignSettings

    if config.align == "part":  # preprocess_data.py --align parts' default margin, not the margin crops'
        return AlignSettings("part", config.crop_size, DEFAULT_PART_MARGIN, part=config.part)
    return AlignSettings(config.align, config.crop_size)


def recipe_from_json(recipe: dict) -> dict:
    """A config.json recipe with today's key names (older runs wrote image_size, L2...)."""
    return {RENAMED.get(k, k): v for k, v in recipe.items()}
