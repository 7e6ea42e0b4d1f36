"""Face detectors, the detection cascade and 5-point landmarks.

The cascade tries detectors in order on a batch of images; an image leaves the cascade
at the first detector that finds a face in it, and the rest go on to the next one.
Detectors that give no landmarks (dlib, Haar, centre box) get them from dlib's 68-point
shape predictor, reduced to the 5 points the aligner uses. When asked (seed_points), every
face, MTCNN's included, also gets the seed's 3 points from that same predictor call.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.core.cli import parse_choices
from utils.core.errors import IcyfaceError

DETECTOR_NAMES = ("mtcnn", "hog", "cnn", "haar", "center")
DEFAULT_CASCADE = ("mtcnn", "hog", "haar", "center")
SELECT_RULES = ("largest", "center")
DEFAULT_HOG_UPSAMPLE = 1
DEFAULT_DETECT_MAX_SIDE = 640
# Side of the fallback square relative to the image's shorter side.
CENTER_BOX_FRACTION = 0.6
# The seed's landmarks (OpenFace's OUTER_EYES_AND_NOSE) in dlib's 68-point numbering: outer
# corner of the eye on the image's left, of the eye on the image's right, nose tip.
SEED_LANDMARKS_68 = (36, 45, 33)


class ModelFileError(IcyfaceError):
    """A bundled model file cannot be found."""


def face_model_file(filename: str) -> Path:
    """Path of a dlib model file shipped in face_recognition_models.

    The package's __init__ imports pkg_resources, which setuptools >= 82 removed, so
    it is located with find_spec (which does not run __init__) instead of imported.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "models" / filename
        if path.is_file():
            return path
    raise ModelFileError(f"{filename} not found: install face_recognition_models "
                         f"(pip install -r requirements.txt); searched {locations or 'nothing'}")


@dataclass
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    landmarks: np.ndarray | None = None  # 5x2, see utils.preprocess.face_alignment for the order
    seed_points: np.ndarray | None = None  # 3x2: dlib 68-point landmarks SEED_LANDMARKS_68

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def scaled(self, factor: float) -> "Face":
        lm, seed = (None if p is None else p * factor for p in (self.landmarks, self.seed_points))
        return Face(tuple(v * factor for v in self.box), self.score, lm, seed)


@dataclass
class Detection:
    face: Face
    detector: str
    n_faces: int  # faces the winning detector saw in the image


def order_landmarks(points: np.ndarray) -> np.ndarray:
    """Eyes and mouth corners sorted left-to-right in the image, whatever the source's naming."""
    points = np.asarray(points, dtype=np.float64).reshape(5, 2).copy()
    if points[0, 0] > points[1, 0]:
        points[[0, 1]] = points[[1, 0]]
    if points[3, 0] > points[4, 0]:
        points[[3, 4]] = points[[4, 3]]
    return points


class MTCNNDetector:
    name = "mtcnn"
    gives_landmarks = True

    def __init__(self):
        from mtcnn import MTCNN

        self._mtcnn = MTCNN(device="CPU:0")

    def _faces(self, found) -> list[Face]:
        faces = []
        for f in found:
            x, y, w, h = (float(v) for v in f["box"])
            if w <= 1 or h <= 1:
                continue
            k = f["keypoints"]
            lm = order_landmarks([k["left_eye"], k["right_eye"], k["nose"], k["mouth_left"], k["mouth_right"]])
            faces.append(Face((x, y, x + w, y + h), float(f["confidence"]), lm))
        return faces

    def detect_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        # MTCNN runs several times faster per image in batches (it pads them to one shape).
        found = self._mtcnn.detect_faces(list(images))
        return [self._faces(f) for f in found]


class DlibHOGDetector:
    name = "hog"
    gives_landmarks = False

    def __init__(self, upsample: int = DEFAULT_HOG_UPSAMPLE):
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample

    def detect_batch(self, images):
        out = []
        for image in images:
            rects, scores, _ = self._detector.run(image, self.upsample, 0.0)
            out.append([Face((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)])
        return out


class DlibCNNDetector:
    """dlib's MMOD CNN: accurate but ~0.5 s per 250 px image on CPU, so not in the default cascade."""

    name = "cnn"
    gives_landmarks = False

    def __init__(self, upsample: int = 0):
        import dlib

        self._detector = dlib.cnn_face_detection_model_v1(str(face_model_file("mmod_human_face_detector.dat")))
        self.upsample = upsample

    def detect_batch(self, images):
        out = []
        for image in images:
            found = self._detector(image, self.upsample)
            out.append([Face((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), float(d.confidence))
                        for d in found])
        return out


class HaarDetector:
    name = "haar"
    gives_landmarks = False

    def __init__(self):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ModelFileError(f"OpenCV Haar cascade not loadable from {path} (opencv-python-headless<5 ships it)")

    def detect_batch(self, images):
        out = []
        for image in images:
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            rects, _, weights = self._cascade.detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=5,
                                                                minSize=(24, 24), outputRejectLevels=True)
            out.append([Face((float(x), float(y), float(x + w), float(y + h)), float(s))
                        for (x, y, w, h), s in zip(rects, np.ravel(weights))])
        return out


class CenterBoxDetector:
    """The last resort: assume the face fills the centre of the picture (as the seed did)."""

    name = "center"
    gives_landmarks = False

    def __init__(self, fraction: float = CENTER_BOX_FRACTION):
        self.fraction = fraction

    def detect_batch(self, images):
        out = []
        for image in images:
            h, w = image.shape[:2]
            side = self.fraction * min(h, w)
            cx, cy = w / 2.0, h / 2.0
            out.append([Face((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), 0.0)])
        return out


class FaceLandmarker:
    """dlib's 68-point predictor on a box, reduced to 5 points (eye centres, nose tip,
    mouth corners). dlib's own 5-point model marks eye corners and the nose base but no
    mouth, so it cannot feed the 5-point template."""

    def __init__(self):
        import dlib

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(face_model_file("shape_predictor_68_face_landmarks.dat")))

    def points68(self, image: np.ndarray, box) -> np.ndarray:
        """All 68 points (x, y), ~3 ms per face on one core."""
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        shape = self._predictor(image, self._dlib.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    @staticmethod
    def five(pts: np.ndarray) -> np.ndarray:
        return order_landmarks([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])

    def __call__(self, image: np.ndarray, box) -> np.ndarray:
        return self.five(self.points68(image, box))


def select_face(faces: list[Face], image_shape, rule: str = "largest") -> Face:
    """'largest': biggest box. 'center': biggest box discounted by its distance from the
    image centre, for photos where the subject stands in the middle of a group."""
    if rule == "largest":
        return max(faces, key=lambda f: f.area)
    h, w = image_shape[:2]

    def centred_area(f: Face) -> float:
        fx, fy = (f.box[0] + f.box[2]) / 2.0, (f.box[1] + f.box[3]) / 2.0
        offset = np.hypot(fx - w / 2.0, fy - h / 2.0) / (0.5 * min(h, w))
        return f.area / (1.0 + 4.0 * offset ** 2)

    return max(faces, key=centred_area)


def make_detector(name: str, hog_upsample: int = DEFAULT_HOG_UPSAMPLE):
    if name == "mtcnn":
        return MTCNNDetector()
    if name == "hog":
        return DlibHOGDetector(hog_upsample)
    if name == "cnn":
        return DlibCNNDetector()
    if name == "haar":
        return HaarDetector()
    if name == "center":
        return CenterBoxDetector()
    raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTOR_NAMES)}")


def parse_detector_list(text: str) -> tuple[str, ...]:
    return parse_choices(text, DETECTOR_NAMES, "detector(s)")


class FaceCascade:
    """Detect the chosen face in each image of a batch with the detectors in order."""

    def __init__(self, detector_names=DEFAULT_CASCADE, hog_upsample: int = DEFAULT_HOG_UPSAMPLE,
                 select: str = "largest", detect_max_side: int = DEFAULT_DETECT_MAX_SIDE, seed_points: bool = False):
        if select not in SELECT_RULES:
            raise ValueError(f"unknown face selection {select!r}; choose from {', '.join(SELECT_RULES)}")
        self.detectors = [make_detector(n, hog_upsample) for n in detector_names]
        self.landmarker = FaceLandmarker()
        self.select = select
        self.detect_max_side = detect_max_side
        # Only the seed's affine and part crops need them: ~10 % more time per image with MTCNN.
        self.seed_points = seed_points

    @staticmethod
    def _guarded(detector, images):
        """A detector that fails on a batch is retried image by image; an image it still
        fails on counts as 'no face' and moves on down the cascade."""
        try:
            return detector.detect_batch(images)
        except Exception:
            out = []
            for image in images:
                try:
                    out.extend(detector.detect_batch([image]))
                except Exception:
                    out.append([])
            return out

    def detect(self, images: list[np.ndarray]) -> list[Detection | None]:
        # Detect on a copy no longer than detect_max_side; coordinates come back full size.
        factors, small = [], []
        for image in images:
            f = min(1.0, self.detect_max_side / max(image.shape[:2]))
            factors.append(f)
            small.append(image if f == 1.0 else
                         cv2.resize(image, (max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f))),
                                    interpolation=cv2.INTER_AREA))
        results: list[Detection | None] = [None] * len(images)
        pending = list(range(len(images)))
        for detector in self.detectors:
            if not pending:
                break
            found = self._guarded(detector, [small[i] for i in pending])
            still = []
            for i, faces in zip(pending, found):
                if not faces:
                    still.append(i)
                    continue
                face = select_face(faces, small[i].shape, self.select)
                if face.landmarks is None or self.seed_points:
                    pts = self.landmarker.points68(small[i], face.box)
                    if face.landmarks is None:
                        face.landmarks = self.landmarker.five(pts)
                    if self.seed_points:
                        face.seed_points = pts[list(SEED_LANDMARKS_68)]
                results[i] = Detection(face.scaled(1.0 / factors[i]), detector.name, len(faces))
            pending = still
        return results
