"""Turning a detected face (box + 5 landmarks) into a square aligned crop.

Landmarks are always 5 points in image coordinates, in this order: eye on the image's
left, eye on the image's right, nose tip, mouth corner on the left, on the right.
Every mode reduces to one 2x3 affine matrix from the source image to the crop; all crops
(fallbacks included) go through the same warp, except the seed's box crops, which are
resized with PIL as the seed did (see align_face).

The seed's three crop sets (bupticybee/icyface_offline, align/segment.py, 2017):
- 'margin' (ExpandMarginSegmenter): the box grown by margin * r / 2 on each side, r = half
  its longer side, clipped to the image, truncated to whole pixels, stretched to a square;
- 'affine' (TwodAlignSegmenter, "2-D align"): dlib 68-point landmarks 36, 45, 33 mapped
  exactly onto OpenFace's min-max template, shrunk by `scale` around the crop's centre;
- 'part' (FacepartSegmenter): a square of side int(margin * r) around one of those three
  landmarks, clipped and truncated like 'margin', stretched to a square.
These take the 3 landmarks as `seed_points` (utils.preprocess.face_detection.SEED_LANDMARKS_68 order).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

ALIGN_MODES = ("margin", "similarity", "affine", "part", "none")
# The seed's sizes (182 px margin, 110 px 2-D align, 50 px parts); ArcFace-family models use 112 px.
DEFAULT_CROP_SIZE = {"margin": 182, "none": 182, "similarity": 112, "affine": 110, "part": 50}
DEFAULT_MARGIN = 0.5
DEFAULT_PART_MARGIN = 1.2
DEFAULT_AFFINE_SCALE = 0.78
SEED_PARTS = 3  # part k is centred on seed point k
# Modes whose geometry changed to the seed's. Crops made before carry no "geometry" in
# their preprocess.json and are read back as LEGACY, so they never pass for seed crops.
SEED_GEOMETRY, LEGACY_GEOMETRY = "seed", "legacy"
GEOMETRY_MODES = ("margin", "affine")
# Settings keys renamed since crops were first recorded (old name -> today's), so older
# crop folders and runs still read: the crop side was "image_size" until it became crop_size.
RENAMED_KEYS = {"image_size": "crop_size"}

# OpenFace's MINMAX_TEMPLATE rows 36, 45, 33 (cmusatyalab/openface, openface/align_dlib.py:
# TEMPLATE, the 68 mean dlib landmarks as float32, min-max normalised per axis), computed
# in float32 as the seed did; (x, y) in [0, 1].
OPENFACE_MINMAX_SEED_POINTS = np.array([
    [0.19415700435638428, 0.16926692426204681],
    [0.7888591289520264, 0.158171147108078],
    [0.49495089054107666, 0.5144413709640503],
], dtype=np.float32)

# Standard 5-point face template for 112x112 ArcFace-family crops (x, y).
ARCFACE_TEMPLATE_112 = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)


@dataclass(frozen=True)
class AlignSettings:
    """How a crop is made. Recorded in preprocess.json; later stages must reuse it."""

    mode: str = "margin"
    crop_size: int = DEFAULT_CROP_SIZE["margin"]
    margin: float = DEFAULT_MARGIN  # used by 'margin', 'part' (seed: 1.2) and legacy 'margin'
    scale: float = DEFAULT_AFFINE_SCALE  # seed 'affine' only
    part: int = 0  # 'part' only: which seed point the crop is centred on
    geometry: str = ""  # GEOMETRY_MODES: SEED_GEOMETRY (the default) or LEGACY_GEOMETRY; others: ""

    def __post_init__(self):
        if self.mode not in ALIGN_MODES:
            raise ValueError(f"unknown alignment mode {self.mode!r}; choose one of {', '.join(ALIGN_MODES)}")
        if self.mode in GEOMETRY_MODES and not self.geometry:
            object.__setattr__(self, "geometry", SEED_GEOMETRY)
        allowed = (SEED_GEOMETRY, LEGACY_GEOMETRY) if self.mode in GEOMETRY_MODES else ("",)
        if self.geometry not in allowed:
            raise ValueError(f"alignment mode {self.mode!r} has no geometry {self.geometry!r}")
        if not 16 <= self.crop_size <= 1024:
            raise ValueError(f"crop size must be between 16 and 1024 px, got {self.crop_size}")
        if not 0.0 <= self.margin <= 3.0:
            raise ValueError(f"margin must be between 0 and 3 (a fraction of the box side), got {self.margin}")
        if not 0.1 <= self.scale <= 2.0:
            raise ValueError(f"affine scale must be between 0.1 and 2, got {self.scale}")
        if not 0 <= self.part < SEED_PARTS:
            raise ValueError(f"part must be 0 to {SEED_PARTS - 1}, got {self.part}")

    @property
    def needs_seed_points(self) -> bool:
        return self.mode == "part" or (self.mode == "affine" and self.geometry == SEED_GEOMETRY)

    def to_dict(self) -> dict:
        # Legacy settings write back no geometry key, as they were read (so they stay legacy).
        d = {"mode": self.mode, "crop_size": self.crop_size, "margin": self.margin}
        if self.geometry == SEED_GEOMETRY:
            d["geometry"] = SEED_GEOMETRY
        if self.mode == "affine" and self.geometry == SEED_GEOMETRY:
            d["scale"] = self.scale
        if self.mode == "part":
            d["part"] = self.part
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AlignSettings":
        d = with_current_keys(d)
        mode = d["mode"]
        geometry = d.get("geometry", LEGACY_GEOMETRY if mode in GEOMETRY_MODES else "")
        return cls(mode=mode, crop_size=int(d["crop_size"]), margin=float(d["margin"]),
                   scale=float(d.get("scale", DEFAULT_AFFINE_SCALE)), part=int(d.get("part", 0)), geometry=geometry)


def with_current_keys(d: dict) -> dict:
    """A recorded alignment dict with renamed keys under today's names, in the same order."""
    return {RENAMED_KEYS.get(k, k): v for k, v in d.items()}


def seed_part_settings(crop_size: int = DEFAULT_CROP_SIZE["part"], margin: float = DEFAULT_PART_MARGIN):
    """The seed's three face-part crop sets (its facepart_0, _1, _2)."""
    return [AlignSettings("part", crop_size, margin, part=k) for k in range(SEED_PARTS)]


def seed_affine_template(crop_size: int, scale: float) -> np.ndarray:
    """Where the seed's 2-D align puts the 3 seed points: the min-max template shrunk by
    scale around the crop's centre (float32 arithmetic, as the seed)."""
    return OPENFACE_MINMAX_SEED_POINTS * np.float32(crop_size * scale) + np.float32(crop_size * (1 - scale) / 2)


def template_landmarks(crop_size: int) -> np.ndarray:
    """The 5-point template scaled to a crop_size x crop_size crop."""
    return ARCFACE_TEMPLATE_112 * (crop_size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping src points onto dst
    (closed form of Umeyama, 1991), as a 2x3 matrix. Reflections are excluded."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    src_var = (src_c ** 2).sum() / len(src)
    scale = (s * d).sum() / src_var if src_var > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def box_crop_matrix(box, margin: float, crop_size: int) -> np.ndarray:
    """Map a square around the box centre, side = longer box side * (1 + margin),
    onto the crop. Squaring (instead of stretching) keeps the face's aspect ratio.
    Used by 'none' and by legacy (pre-seed-geometry) 'margin' settings."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    scale = crop_size / side
    return np.array([[scale, 0.0, crop_size / 2.0 - scale * cx],
                     [0.0, scale, crop_size / 2.0 - scale * cy]])


def seed_region(region, image_shape) -> tuple[int, int, int, int]:
    """A float (x0, y0, x1, y1) clipped to the image and truncated to whole pixels, as the
    seed did (np.maximum/np.minimum, then assignment into an int32 array)."""
    h, w = image_shape[:2]
    x0, y0 = int(max(region[0], 0)), int(max(region[1], 0))
    x1, y1 = int(min(region[2], w)), int(min(region[3], h))
    # The seed crashed on an empty region (a box or point off the image); keep one pixel instead.
    x0, y0 = min(x0, w - 1), min(y0, h - 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def half_side(box) -> int:
    """The seed's r: half the box's longer side, truncated."""
    return int(max(box[2] - box[0], box[3] - box[1]) / 2)


def region_matrix(region, crop_size: int) -> np.ndarray:
    """Stretch the integer region img[y0:y1, x0:x1] onto the crop with PIL's pixel-centre
    convention, x_dst = (x_src - x0 + 0.5) * size / (x1 - x0) - 0.5 (same for y): the
    geometry of the seed's bilinear imresize of the cut-out region (align_face uses PIL)."""
    x0, y0, x1, y1 = region
    sx, sy = crop_size / (x1 - x0), crop_size / (y1 - y0)
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5],
                     [0.0, sy, (0.5 - y0) * sy - 0.5]])


def seed_margin_region(box, margin: float, image_shape) -> tuple[int, int, int, int]:
    """ExpandMarginSegmenter: the box (not squared) grown by m / 2 = r * margin / 2 per side."""
    m = half_side(box) * margin
    x0, y0, x1, y1 = (float(v) for v in box)
    return seed_region((x0 - m / 2, y0 - m / 2, x1 + m / 2, y1 + m / 2), image_shape)


def seed_part_region(point, box, margin: float, image_shape) -> tuple[int, int, int, int]:
    """FacepartSegmenter: a square of side m = int(r * margin) centred on the point."""
    m = int(half_side(box) * margin)
    x, y = (float(v) for v in point)
    return seed_region((x - m / 2, y - m / 2, x + m / 2, y + m / 2), image_shape)


def _seed_points(settings: AlignSettings, seed_points) -> np.ndarray:
    if seed_points is None:
        raise ValueError(f"alignment mode {settings.mode!r} needs the 3 seed landmarks (dlib 68-point 36, 45, 33)")
    return np.asarray(seed_points, dtype=np.float64).reshape(3, 2)


def seed_crop_region(settings: AlignSettings, box, image_shape, seed_points=None) -> tuple[int, int, int, int] | None:
    """The integer region a seed box crop stretches to the output; None for warped modes."""
    if settings.mode == "margin" and settings.geometry == SEED_GEOMETRY:
        return seed_margin_region(box, settings.margin, image_shape)
    if settings.mode == "part":
        return seed_part_region(_seed_points(settings, seed_points)[settings.part], box, settings.margin, image_shape)
    return None


def alignment_matrix(settings: AlignSettings, box, landmarks: np.ndarray | None, image_shape=None,
                     seed_points=None) -> np.ndarray:
    """image_shape (the source image's) is needed by the seed box crops, which clip to it;
    seed_points (3x2) by the seed's 'affine' and 'part'."""
    size = settings.crop_size
    if settings.needs_seed_points and settings.mode == "affine":
        # The seed's 2-D align; its float32 points give the same matrix as the seed's call.
        return cv2.getAffineTransform(_seed_points(settings, seed_points).astype(np.float32),
                                      seed_affine_template(size, settings.scale)).astype(np.float64)
    if image_shape is not None:
        region = seed_crop_region(settings, box, image_shape, seed_points)
        if region is not None:
            return region_matrix(region, size)
    elif settings.geometry == SEED_GEOMETRY or settings.mode == "part":
        raise ValueError(f"{settings.mode} crops clip to the image: pass image_shape")
    if settings.mode == "margin":
        return box_crop_matrix(box, settings.margin, size)
    if settings.mode == "none":
        return box_crop_matrix(box, 0.0, size)
    if landmarks is None:
        raise ValueError(f"alignment mode {settings.mode!r} needs landmarks")
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    template = template_landmarks(size)
    if settings.mode == "similarity":
        return estimate_similarity(landmarks, template)
    # Legacy 'affine' (before the seed's geometry): eye centres and nose onto the ArcFace template.
    return cv2.getAffineTransform(landmarks[:3].astype(np.float32), template[:3].astype(np.float32)).astype(np.float64)


def warp_crop(image: np.ndarray, matrix: np.ndarray, crop_size: int) -> np.ndarray:
    """Apply the 2x3 matrix; area outside the source image is black."""
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 0.5:
        # Shrinking a large face more than 2x: smooth first so the crop does not alias.
        sigma = 0.5 / scale * 0.6
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.warpAffine(image, matrix, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def align_face(image: np.ndarray, box, landmarks, settings: AlignSettings, seed_points=None) -> np.ndarray:
    """The crop of one face. The seed's affine went through cv2.warpAffine too (black
    outside the image); it did not blur before shrinking below half size, which warp_crop
    does (only photos whose eyes are over ~2x the template's apart: not LFW/CASIA sizes)."""
    size = settings.crop_size
    region = seed_crop_region(settings, box, image.shape, seed_points)
    if region is None:
        return warp_crop(image, alignment_matrix(settings, box, landmarks, image.shape, seed_points), size)
    # Pixels from PIL's bilinear resize of the cut-out, the seed's own resampler (scipy's
    # imresize called it), so crops are the seed's bit for bit. A warp of region_matrix gets
    # within ~0.2 grey levels when enlarging (margin crops), but part crops mostly shrink
    # (60-80 px -> 50), where PIL widens its filter: 0.7 mean, visible edge rows differ.
    x0, y0, x1, y1 = region
    cut = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    return np.array(cut.resize((size, size), Image.BILINEAR))


def transform_points(matrix: np.ndarray, points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:, :2].T + matrix[:, 2]
