"""What a preprocessing run is given and what it checks before any work: the settings that
decide what a crop looks like (recorded in preprocess.json), the output folder named after
them, the expected input layout, and the errors that stop a run as a whole.

Shared by the stage driver (utils.preprocess.driver) and the shard merge (utils.preprocess.shards), which
both refuse a folder holding crops made with other settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from utils.core.errors import IcyfaceError
from utils.core.image_io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS
from utils.core.run_io import git_revision, package_versions, read_json
from utils.preprocess.datasets import DatasetError, DatasetScan, loose_photos, no_images_message, scan_dataset
from utils.preprocess.face_alignment import AlignSettings, with_current_keys
from utils.preprocess.face_detection import (
    CENTER_BOX_FRACTION,
    DEFAULT_CASCADE,
    DEFAULT_DETECT_MAX_SIDE,
    DEFAULT_HOG_UPSAMPLE,
    SELECT_RULES,
)

SETTINGS_NAME = "preprocess.json"
DEFAULT_INPUT_DIR = Path("data/CASIA-WebFace")  # preprocess_data.py's --input-dir; training's default crops' source
DEFAULT_BATCH_SIZE = 16  # MTCNN's per-image cost flattens out around 16 images a batch
VERSIONED_PACKAGES = ("numpy", "pillow", "opencv-python-headless", "dlib-bin", "mtcnn", "tensorflow",
                      "face_recognition_models")
CASIA_HELP = ("Expected layout: <input-dir>/<identity>/<image>, one folder per person "
              "(CASIA-WebFace: 10,575 folders, 494,414 JPEGs). CASIA-WebFace is distributed by its "
              "authors on request (Yi et al., 'Learning Face Representation from Scratch', 2014); "
              "unpack it to data/CASIA-WebFace or pass --input-dir.")


class PreprocessError(IcyfaceError):
    """A problem with the run as a whole (not one image): reported to the user, exit non-zero."""


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that decides what a crop looks like. Saved to preprocess.json; a rerun
    into the same folder must use the same settings, and later stages read them."""

    align: AlignSettings = field(default_factory=AlignSettings)
    detectors: tuple[str, ...] = DEFAULT_CASCADE
    hog_upsample: int = DEFAULT_HOG_UPSAMPLE
    select: str = "largest"
    detect_max_side: int = DEFAULT_DETECT_MAX_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    output_format: str = "png"
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self):
        if self.select not in SELECT_RULES:
            raise ValueError(f"unknown face selection {self.select!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {self.output_format!r}; choose from {', '.join(OUTPUT_FORMATS)}")
        if self.batch_size < 1 or self.hog_upsample < 0 or self.detect_max_side < 32 or self.max_pixels < 1:
            raise ValueError("batch size >= 1, hog upsample >= 0, detect max side >= 32 and max pixels >= 1 required")

    def to_dict(self) -> dict:
        return {"align": self.align.to_dict(), "detectors": list(self.detectors), "hog_upsample": self.hog_upsample,
                "select": self.select, "detect_max_side": self.detect_max_side, "max_pixels": self.max_pixels,
                "output_format": self.output_format, "batch_size": self.batch_size,
                "center_box_fraction": CENTER_BOX_FRACTION}

    def make_cascade(self, seed_points: bool | None = None):
        """The detection cascade these settings describe (loads the detectors' models);
        seed_points defaults to whether this alignment needs them."""
        from utils.preprocess.face_detection import FaceCascade

        return FaceCascade(self.detectors, self.hog_upsample, self.select, self.detect_max_side,
                           seed_points=self.align.needs_seed_points if seed_points is None else seed_points)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSettings":
        return cls(align=AlignSettings.from_dict(d["align"]), detectors=tuple(d["detectors"]),
                   hog_upsample=int(d["hog_upsample"]), select=d["select"], detect_max_side=int(d["detect_max_side"]),
                   max_pixels=int(d["max_pixels"]), output_format=d["output_format"], batch_size=int(d["batch_size"]))


def normalised_settings(recorded):
    """A settings dict read from a preprocess.json, with keys renamed since (align.image_size,
    now align.crop_size) under today's names, so a folder made before a rename still matches
    its settings. Every value stays as recorded: a change of any setting (center_box_fraction
    included) still shows. Anything that is not a settings dict is returned as it is."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("align"), dict):
        return recorded
    return {**recorded, "align": with_current_keys(recorded["align"])}


def default_output_dir(input_dir: Path, align: AlignSettings, data_root: Path = Path("data")) -> Path:
    """data/<input name>-<mode>-<size>[-m<margin>][-s<scale>] (mode 'part<k>' for parts), so
    different settings never share a folder."""
    mode = f"part{align.part}" if align.mode == "part" else align.mode
    tag = f"{mode}-{align.crop_size}"
    if align.mode in ("margin", "part"):
        tag += f"-m{align.margin:g}"
    if align.mode == "affine" and align.needs_seed_points:
        tag += f"-s{align.scale:g}"
    return data_root / f"{Path(input_dir).resolve().name}-{tag}"


def run_record(input_dir: Path, settings: PreprocessSettings, status: str) -> dict:
    """The head of a preprocess.json: what was cropped, how, and with which code."""
    return {"input_dir": str(input_dir), "settings": settings.to_dict(), "status": status,
            "versions": package_versions(VERSIONED_PACKAGES), "code_revision": git_revision()}


def check_existing_settings(settings_path: Path, settings: PreprocessSettings, input_dir: Path):
    """Refuse an output folder whose settings file (if any) records other settings or input."""
    if not settings_path.exists():
        return
    output_dir = settings_path.parent
    previous = read_json(settings_path)
    if normalised_settings(previous.get("settings")) != settings.to_dict():
        raise PreprocessError(
            f"{output_dir} holds crops made with other settings ({settings_path.name}):\n"
            f"  there: {previous.get('settings')}\n  now:   {settings.to_dict()}\nChoose another --output-dir "
            f"(the default is named after the settings) or delete that folder.")
    if previous.get("input_dir") and Path(previous["input_dir"]) != input_dir:
        raise PreprocessError(f"{output_dir} holds crops of {previous['input_dir']}, not {input_dir}; "
                              f"choose another --output-dir")


def scan_input(input_dir: Path) -> DatasetScan:
    """The input's images, or a PreprocessError saying which layout is expected (the layout
    help is left off where the message already says what to pass: a file, a flat folder)."""
    try:
        scan = scan_dataset(input_dir)
    except DatasetError as err:
        raise PreprocessError(str(err) if Path(input_dir).exists() else f"{err}\n{CASIA_HELP}") from None
    if not scan.entries:
        message = no_images_message(scan)
        raise PreprocessError(message if loose_photos(scan) else f"{message}\n{CASIA_HELP}")
    return scan
