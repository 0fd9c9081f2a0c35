"""Stage `download`: the pipeline's entry for the raw images; lists them in data/raw/manifest.csv.

Sources (`data.source`):
  lfw_subset  the 100 real faces scikit-image ships in its wheel (offline, the default),
              as `face_generation.data.fetch` wrote them into data/sources/lfw_subset/;
  folder      any directory or .zip of images (`data.path`); CelebA's layout and UTKFace's
              file-name labels are recognised;
  celeba      the official aligned CelebA files that `face_generation.data.fetch` downloaded
              into data/sources/celeba/ (needs network; `data.dvc` versions them).

The manifest lists every image file found with its content hash and whatever labels the
source has (identity, official partition, age, gender, race); files that cannot be read are
skipped and counted in data/raw/manifest.json.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import zipfile
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from face_generation.config import config_from_args, stage_parser
from face_generation.data import images
from face_generation.data.tables import (
    MANIFEST_COLUMNS,
    Row,
    Skipped,
    manifest_path,
    remove_leftovers,
    sources_dir,
    stage_summary,
    summary_path,
    write_json,
    write_table,
)
from face_generation.errors import UserError, reported_errors

CELEBA_IMAGE_DIR = "img_align_celeba"
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_PARTITIONS = {"0": "train", "1": "val", "2": "test"}
# UTKFace: "{age}_{gender}_{race}_{datetime}.jpg.chip.jpg"
UTKFACE_NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>[01])_(?P<race>[0-4])_\d+")
FETCH_HINT = (
    "run `python -m face_generation.data.fetch --params params.yaml` (what `make run` does "
    "before `dvc repro`), or `dvc pull data.dvc` for the team's copy"
)


def list_image_files(root: Path) -> list[str]:
    """Image paths under a directory (sorted, symlinked directories not followed) or in a zip."""
    if zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
        return sorted(
            f"{root}{images.ZIP_SEPARATOR}{name}"
            for name in names
            if images.is_image_name(name) and not Path(name).name.startswith(".")
        )
    found: list[str] = []
    for directory, subdirectories, files in os.walk(root, followlinks=False):
        subdirectories.sort()
        found.extend(
            os.path.join(directory, name)
            for name in files
            if images.is_image_name(name) and not name.startswith(".")
        )
    return sorted(found)


def read_label_table(root: Path, name: str) -> dict[str, str]:
    """CelebA's "file.jpg value" tables, from the folder, beside the zip, or inside the zip."""
    candidates = [root / name, root.parent / name] if root.is_dir() else [root.parent / name]
    text = None
    for candidate in candidates:
        if candidate.is_file():
            text = candidate.read_text()
            break
    if text is None and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as archive:
            members = [m for m in archive.namelist() if Path(m).name == name]
            if members:
                text = archive.read(members[0]).decode()
    if text is None:
        return {}
    table = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            table[fields[0]] = fields[1]
    return table


def utkface_labels(file_name: str) -> dict[str, str] | None:
    match = UTKFACE_NAME.match(file_name)
    return match.groupdict() if match else None


def scan_images(root: Path) -> tuple[list[Row], Skipped]:
    """Manifest rows for every readable image under `root`, and the files skipped."""
    if not root.exists():
        raise FileNotFoundError(
            f"data.path={root} does not exist: point data.path at a folder or .zip of face images"
        )
    paths = list_image_files(root)
    if not paths:
        raise UserError(
            f"no images found in {root} (looked for {', '.join(images.IMAGE_EXTENSIONS)} files); "
            "point data.path at a folder or .zip of face images"
        )
    identities = read_label_table(root, CELEBA_IDENTITY_FILE)
    partitions = read_label_table(root, CELEBA_PARTITION_FILE)
    rows: list[Row] = []
    skipped = Skipped()
    for path in tqdm(paths, desc="download: hashing", unit="img", mininterval=1.0):
        try:
            sha1 = hashlib.sha1(images.read_bytes(path)).hexdigest()
        except images.ImageError as error:
            skipped.add(path, error.reason)
            continue
        name = Path(path.split(images.ZIP_SEPARATOR)[-1]).name
        row: Row = {"path": path, "sha1": sha1, "identity": identities.get(name, "")}
        row["partition"] = CELEBA_PARTITIONS.get(partitions.get(name, ""), "")
        row.update(utkface_labels(name) or {})
        rows.append(row)
    return rows, skipped


def source_root(cfg: DictConfig) -> Path:
    """Where the images of the configured source lie: data/sources/<source>/ as `fetch` wrote
    it (or `dvc pull data.dvc` restored it), or the folder `data.path` names."""
    source = cfg.data.source
    if source == "folder":
        if not cfg.data.path:
            raise UserError("data=folder needs data.path=/path/to/images (a folder or a .zip)")
        return Path(cfg.data.path)
    if source == "lfw_subset":
        root = sources_dir(cfg) / "lfw_subset"
        if not root.is_dir():
            raise UserError(f"{root} is missing: {FETCH_HINT}")
        return root
    if source == "celeba":
        root = sources_dir(cfg) / "celeba" / f"{CELEBA_IMAGE_DIR}.zip"
        if not root.is_file():
            raise UserError(f"{root} is missing: {FETCH_HINT} (data=celeba downloads it)")
        return root
    raise UserError(f"unknown data.source {source!r}: use lfw_subset, folder or celeba")


def run(cfg: DictConfig) -> list[Row]:
    started = time.perf_counter()
    remove_leftovers(cfg, "download")
    root = source_root(cfg)
    rows, skipped = scan_images(root)
    # UTKFace-style names that lack a field: the image is kept, its labels are left empty.
    has_labels = [bool(row.get("age")) for row in rows]
    unlabelled = has_labels.count(False) if any(has_labels) else 0
    output = manifest_path(cfg)
    write_table(output, rows, MANIFEST_COLUMNS)
    skipped.write(output)
    counts = skipped.counts()
    seen = len(rows) + sum(counts.values())
    write_json(
        summary_path(output),
        {
            "source": cfg.data.source,
            "root": str(root),
            "images_in": seen,
            "images_out": len(rows),
            "skipped": counts,
            "kept_without_labels": unlabelled,
        },
    )
    seconds = time.perf_counter() - started
    print(stage_summary("download", seen, len(rows), counts, seconds, skipped.examples(output)))
    if unlabelled:
        print(
            f"[download] {unlabelled} file names lack UTKFace's age_gender_race fields; kept unlabelled"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = stage_parser(__doc__ or "").parse_args(argv)
    with reported_errors("download"):
        run(config_from_args(args))


if __name__ == "__main__":
    main()
