"""dlib descriptors of many faces for the identity stage: every row gets one, or a flag.

Each face is tried three ways before it counts as failed: the face box dlib's detector finds;
when it finds none, the fallback box of the aligned crop (eval.identity.fallback_box: the whole
crop is a worse box for CelebA-style crops, face_boxes.py); when dlib raises or returns a
non-finite vector, the whole aligned crop. A face that still fails keeps its row, with a zero
vector and ok = False, and is counted.

dlib describes one face at a time on one core, so large sets are spread over worker
processes. This module imports neither torch nor the rest of the package, so a worker starts
in well under a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np

from face_generation.networks.face_boxes import FaceBoxes

DETECTED, FALLBACK, WHOLE_CROP, FAILED = "detected", "fallback_box", "whole_crop", "failed"


class DescribedRows(NamedTuple):
    vectors: np.ndarray  # N×128 float32, unit length (zeros where failed)
    ok: np.ndarray  # N bool
    counts: Counter[str]  # how the faces were described


class DlibDescriber:
    """dlib's landmark model and recogniser, with the face boxes of face_boxes.py: the one
    wrapper of dlib's networks, used by the identity stage, the verify stage and evaluation's
    judge (networks/dlib_face.py)."""

    def __init__(
        self,
        landmarks_file: Path,
        recognition_file: Path,
        face_box: str,
        fallback_box: Sequence[float],
        detector_upsample: int,
    ) -> None:
        import dlib

        self.landmarks = dlib.shape_predictor(str(landmarks_file))
        self.recogniser = dlib.face_recognition_model_v1(str(recognition_file))
        self.boxes = FaceBoxes(face_box, fallback_box, detector_upsample)

    def descriptor(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """dlib's float64 descriptor of the face in `box` of a contiguous uint8 H×W×3 image, as
        dlib returns it (a RuntimeError when dlib fails on it)."""
        import dlib

        shape = self.landmarks(image, dlib.rectangle(*box))
        return np.asarray(self.recogniser.compute_face_descriptor(image, shape), np.float64)

    def vector(self, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
        """The unit-length descriptor of the face in `box`, or None when dlib fails on it."""
        try:
            vector = self.descriptor(image, box)
        except RuntimeError:
            return None
        norm = np.linalg.norm(vector)
        return (vector / norm).astype(np.float32) if np.isfinite(norm) and norm > 0 else None

    def describe(self, faces: np.ndarray) -> DescribedRows:
        """uint8 N×H×W×3 faces -> one row each (see the module docstring)."""
        vectors = np.zeros((len(faces), 128), np.float32)
        ok = np.zeros(len(faces), bool)
        counts: Counter[str] = Counter()
        for index, face in enumerate(faces):
            image = np.ascontiguousarray(face)
            found_before = self.boxes.faces_detected
            vector = self.vector(image, self.boxes.box(image))
            how = DETECTED if self.boxes.faces_detected > found_before else FALLBACK
            if vector is None:
                height, width = image.shape[:2]
                vector, how = self.vector(image, (0, 0, width - 1, height - 1)), WHOLE_CROP
            if vector is None:
                how = FAILED
            else:
                vectors[index], ok[index] = vector, True
            counts[how] += 1
        return DescribedRows(vectors, ok, counts)


_describer: DlibDescriber | None = None  # one per worker process


def _start_worker(*arguments: object) -> None:
    global _describer
    _describer = DlibDescriber(*arguments)  # type: ignore[arg-type]


def _describe_in_worker(faces: np.ndarray) -> DescribedRows:
    assert _describer is not None
    return _describer.describe(faces)


class DlibPool:
    """Describes faces chunk by chunk: here for a single chunk, else in `workers` processes
    (started once, on the first set that needs them, and kept for the next sets)."""

    def __init__(self, arguments: tuple[object, ...], workers: int, chunk_size: int) -> None:
        self.arguments, self.workers, self.chunk_size = arguments, workers, chunk_size
        self.local: DlibDescriber | None = None
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> DlibPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def describe(self, faces: np.ndarray) -> Iterator[tuple[int, DescribedRows]]:
        """(first row, rows) per chunk of `faces`, in order. At most two chunks per worker are
        in flight, so a memory-mapped split is never read whole."""
        starts = range(0, len(faces), self.chunk_size)
        if self.workers < 1 or len(starts) < 2:
            self.local = self.local or DlibDescriber(*self.arguments)  # type: ignore[arg-type]
            for start in starts:
                yield start, self.local.describe(np.asarray(faces[start : start + self.chunk_size]))
            return
        # spawn: a fork of a process holding torch's thread pools may deadlock in the child.
        self.pool = self.pool or ProcessPoolExecutor(
            self.workers, get_context("spawn"), _start_worker, self.arguments
        )
        pending: list[tuple[int, Future[DescribedRows]]] = []
        for start in starts:
            chunk = np.asarray(faces[start : start + self.chunk_size])
            pending.append((start, self.pool.submit(_describe_in_worker, chunk)))
            if len(pending) >= 2 * self.workers:
                first, future = pending.pop(0)
                yield first, future.result()
        for first, future in pending:
            yield first, future.result()
