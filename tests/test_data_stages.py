"""The data stages (download -> split -> crop -> pack) on real faces and on bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_generation.data import crop, download, images, pack, split
from face_generation.data.download import UTKFACE_NAME
from face_generation.data.tables import SPLITS, packed_dir
from tests.conftest import link_images


def run_stages(cfg) -> dict:
    download.run(cfg)
    split.run(cfg)
    crop.run(cfg)
    pack.run(cfg)
    return json.loads((Path(cfg.paths.metrics) / "data.json").read_text())


def packed(cfg) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    folder = packed_dir(cfg)
    arrays = {name: np.load(folder / f"{name}.npy") for name in SPLITS}
    with (folder / "index.csv").open() as handle:
        return arrays, list(csv.DictReader(handle))


def assert_row_aligned(arrays: dict[str, np.ndarray], index: list[dict[str, str]]) -> None:
    for name, array in arrays.items():
        rows = [row for row in index if row["split"] == name]
        assert [int(row["row"]) for row in rows] == list(range(len(array)))


def test_embedded_default_end_to_end(make_config) -> None:
    cfg = make_config()
    report = run_stages(cfg)
    arrays, index = packed(cfg)
    assert report["images_found"] == 100 and report["images_packed"] == 100
    assert sum(len(a) for a in arrays.values()) == 100
    for array in arrays.values():
        assert array.dtype == np.uint8 and array.shape[1:] == (32, 32, 3)
        assert len(array) > 0
    # Grey faces come out as RGB with equal channels, and are not blank.
    train = arrays["train"].astype(int)
    assert np.array_equal(train[..., 0], train[..., 1]) and train.std() > 20
    assert_row_aligned(arrays, index)
    meta = json.loads((packed_dir(cfg) / "meta.json").read_text())
    assert meta["resolution"] == 32 and len(meta["data_hash"]) == 16


def test_packed_faces_match_their_source_images(
    make_config, celeba_sample: Path, tmp_path: Path
) -> None:
    names = [f"{i:06d}.jpg" for i in range(1, 41)]
    folder = link_images(celeba_sample / "img_align_celeba", tmp_path / "faces", names)
    cfg = make_config("data=folder", f"data.path={folder}", "data.resolution=64")
    run_stages(cfg)
    arrays, index = packed(cfg)
    row = next(row for row in index if row["split"] == "train")
    source = Image.open(row["path"]).convert("RGB")
    box = tuple(int(row[k]) for k in ("box_left", "box_top", "box_right", "box_bottom"))
    expected = np.asarray(source.crop(box).resize((64, 64), Image.Resampling.BILINEAR), dtype=float)
    got = arrays["train"][int(row["row"])].astype(float)
    assert np.abs(got - expected).mean() < 3.0  # same face, same crop; resamplers differ slightly


def test_celeba_sample_identity_disjoint_fallback(
    make_config, celeba_sample: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "celeba"
    names = [f"{i:06d}.jpg" for i in range(1, 301)]
    link_images(celeba_sample / "img_align_celeba", folder / "img_align_celeba", names)
    link_images(celeba_sample, folder, ["identity_CelebA.txt", "list_eval_partition.txt"])
    cfg = make_config("data=folder", f"data.path={folder}", "data.resolution=64")
    report = run_stages(cfg)
    assert "official partition leaves val, test empty" in capsys.readouterr().out
    arrays, index = packed(cfg)
    assert report["images_packed"] == 300
    assert all(len(arrays[name]) > 0 for name in SPLITS)
    assert arrays["train"].shape[1:] == (64, 64, 3)
    splits_of_identity = defaultdict(set)
    for row in index:
        assert row["identity"] and row["partition"] == "train"
        splits_of_identity[row["identity"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of_identity.values())
    assert_row_aligned(arrays, index)


def test_official_partition_used_when_it_covers_every_split(
    make_config, celeba_sample: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "celeba"
    names = [f"{i:06d}.jpg" for i in range(1, 31)]
    link_images(celeba_sample / "img_align_celeba", folder / "img_align_celeba", names)
    link_images(celeba_sample, folder, ["identity_CelebA.txt"])
    # A partition file like the official one, in which the sample spans all three splits.
    lines = [f"{name} {i % 3}" for i, name in enumerate(names)] + ["999999.jpg 0"]  # listed, absent
    (folder / "list_eval_partition.txt").write_text("\n".join(lines))
    cfg = make_config("data=folder", f"data.path={folder}")
    download.run(cfg)
    rows = split.run(cfg)
    assert {row["split"] for row in rows} == set(SPLITS)
    assert all(row["split"] == row["partition"] for row in rows)


def test_utkface_labels_and_malformed_names(
    make_config, utkface_sample: Path, tmp_path: Path
) -> None:
    every = sorted(os.listdir(utkface_sample))
    malformed = [name for name in every if not UTKFACE_NAME.match(name)]
    assert len(malformed) == 3
    names = every[:60] + malformed
    folder = link_images(utkface_sample, tmp_path / "utk", names)
    cfg = make_config(
        "data=folder",
        f"data.path={folder}",
        "data.resolution=128",
        "data.split.fractions.val=0.2",
        "data.split.fractions.test=0.2",
    )
    report = run_stages(cfg)
    summary = json.loads((Path(cfg.paths.data) / "raw" / "manifest.json").read_text())
    assert summary["kept_without_labels"] == 3
    arrays, index = packed(cfg)
    assert report["images_packed"] == 63 and arrays["train"].shape[1:] == (128, 128, 3)
    by_name = {Path(row["path"]).name: row for row in index}
    age, gender, race = every[0].split("_")[:3]
    assert (by_name[every[0]]["age"], by_name[every[0]]["gender"], by_name[every[0]]["race"]) == (
        age,
        gender,
        race,
    )
    assert all(by_name[name]["age"] == "" for name in malformed)


def test_mtcnn_finds_faces_and_skips_faceless(
    make_config, utkface_sample: Path, tmp_path: Path
) -> None:
    folder = link_images(
        utkface_sample, tmp_path / "photos", sorted(os.listdir(utkface_sample))[100:116]
    )
    # A landscape-like picture with no face in it: a smooth colour gradient.
    gradient = np.linspace(0, 255, 200 * 200 * 3).reshape(200, 200, 3).astype(np.uint8)
    Image.fromarray(gradient).save(folder / "no_face.png")
    fractions = [
        "data.split.fractions.train=0.4",
        "data.split.fractions.val=0.3",
        "data.split.fractions.test=0.3",
    ]
    cfg = make_config(
        "data=folder",
        f"data.path={folder}",
        "data.crop.method=mtcnn",
        "data.resolution=64",
        *fractions,
    )
    report = run_stages(cfg)
    assert report["skipped"].get("no_face", 0) >= 1
    assert report["images_packed"] >= 15  # UTKFace crops are faces: MTCNN finds nearly all
    _, index = packed(cfg)
    assert "no_face.png" not in {Path(row["path"]).name for row in index}
    for row in index:  # square boxes inside the 200x200 image
        left, top, right, bottom = (
            int(row[k]) for k in ("box_left", "box_top", "box_right", "box_bottom")
        )
        assert (
            right - left == bottom - top and 0 <= left < right <= 200 and 0 <= top < bottom <= 200
        )


def save(image: Image.Image, path: Path, **options) -> None:
    image.save(path, **options)


@pytest.fixture
def bad_folder(celeba_sample: Path, tmp_path: Path) -> Path:
    """Real faces plus every kind of bad or unusual file a user's folder can hold."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    faces = [
        Image.open(celeba_sample / "img_align_celeba" / f"{i:06d}.jpg").convert("RGB")
        for i in range(1, 25)
    ]
    for i, face in enumerate(faces[:20]):
        save(face, folder / f"good_{i:02d}.jpg")
    data = (folder / "good_00.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is a text file, not a picture\n")
    rgba = faces[20].convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0))  # fully transparent: must come out white
    save(rgba, folder / "alpha.png")
    grey16 = np.full((109, 89), 65535, dtype=np.uint16)
    save(Image.fromarray(grey16), folder / "sixteen_bit.png")
    save(faces[21].convert("L"), folder / "grey.jpg")
    save(faces[22].convert("CMYK"), folder / "cmyk.jpg")
    save(Image.new("RGB", (1, 1), (10, 20, 30)), folder / "one_pixel.png")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "subdir_loop").symlink_to(folder, target_is_directory=True)
    shutil.copy(folder / "good_01.jpg", folder / "duplicate_of_good_01.jpg")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder


def test_bad_inputs_are_skipped_and_counted(make_config, bad_folder: Path) -> None:
    cfg = make_config(
        "data=folder", f"data.path={bad_folder}", "data.resolution=32", "data.crop.min_size=16"
    )
    report = run_stages(cfg)
    assert report["skipped"] == {
        "corrupt": 1,  # truncated.jpg
        "not_an_image": 1,  # notes.jpg
        "too_small": 1,  # one_pixel.png
        "unreadable": 1,  # loop.jpg
        "duplicate": 1,  # duplicate_of_good_01.jpg
    }
    assert report["images_found"] == 29 and report["images_packed"] == 24
    arrays, index = packed(cfg)
    faces = {Path(row["path"]).name: arrays[row["split"]][int(row["row"])] for row in index}
    assert faces["alpha.png"].min() == 255  # transparent -> white
    assert faces["sixteen_bit.png"].min() == 255  # 16-bit full scale -> 255, not clipped garbage
    grey = faces["grey.jpg"].astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 2
    cmyk, reference = faces["cmyk.jpg"].astype(float), faces["good_02.jpg"].astype(float)
    assert cmyk.std() > 20 and reference.std() > 20  # decoded to a real picture, not noise


def header_or_reason(path: str, prefix_size: int | None) -> images.ImageHeader | str:
    """The header read from a prefix of the file, or by PIL from all of it (None)."""
    try:
        if prefix_size is None:
            return images.read_header(images.read_bytes(path))
        return images.read_file_header(path, prefix_size)
    except images.ImageError as error:
        return error.reason


def test_file_headers_read_from_a_prefix_match_pil(bad_folder: Path, tmp_path: Path) -> None:
    face = Image.open(bad_folder / "good_00.jpg")
    # The size of these lies beyond a 1 kB prefix: a long comment before the frame header,
    # or a file cut short inside it; the first falls back to PIL on the whole file.
    face.save(bad_folder / "long_comment.jpg", comment=b"x" * 5000)
    (bad_folder / "cut_in_header.jpg").write_bytes((bad_folder / "good_00.jpg").read_bytes()[:40])
    face.save(bad_folder / "bitmap.bmp")  # a format read by PIL alone
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(bad_folder / "good_01.jpg", "good_01.jpg")
        zipped.writestr("notes.jpg", "not a picture")
    paths = [str(path) for path in sorted(bad_folder.iterdir()) if images.is_image_name(path.name)]
    paths += [f"{archive}{images.ZIP_SEPARATOR}{name}" for name in ("good_01.jpg", "notes.jpg")]
    found = {}
    for path in paths:
        found[Path(path).name] = header_or_reason(path, 1024)
        assert found[Path(path).name] == header_or_reason(path, None), path
    long_comment = (bad_folder / "long_comment.jpg").read_bytes()
    assert images.parse_header(long_comment[:1024]) is None  # so PIL read the whole file
    assert found["long_comment.jpg"] == images.ImageHeader(89, 109, "JPEG")
    assert found["cmyk.jpg"] == images.ImageHeader(89, 109, "JPEG")
    assert found["sixteen_bit.png"] == images.ImageHeader(89, 109, "PNG")
    assert found["loop.jpg"] == images.UNREADABLE and found["notes.jpg"] == images.NOT_AN_IMAGE


def test_threads_pack_the_same_faces_as_one_thread(
    make_config, celeba_sample: Path, tmp_path: Path
) -> None:
    names = [f"{i:06d}.jpg" for i in range(1, 121)]
    folder = link_images(celeba_sample / "img_align_celeba", tmp_path / "faces", names)
    settings = ["data=folder", f"data.path={folder}", "data.pack.chunk_size=16"]
    results = []
    for workers in (2, 0):
        cfg = make_config(*settings, f"data.pack.workers={workers}", root=tmp_path / str(workers))
        run_stages(cfg)
        arrays, _ = packed(cfg)
        results.append((arrays, json.loads((packed_dir(cfg) / "meta.json").read_text())))
    (threaded, threaded_meta), (alone, alone_meta) = results
    assert threaded_meta == alone_meta
    for name in SPLITS:
        np.testing.assert_array_equal(threaded[name], alone[name])


def test_folder_without_images_is_a_clear_error(make_config, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    cfg = make_config("data=folder", f"data.path={empty}")
    with pytest.raises(ValueError, match="no images found in"):
        download.run(cfg)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        download.run(make_config("data=folder", f"data.path={tmp_path / 'missing'}"))


def test_zip_in_celeba_layout(make_config, celeba_sample: Path, tmp_path: Path) -> None:
    archive = tmp_path / "celeba.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for i in range(1, 41):
            name = f"{i:06d}.jpg"
            zipped.write(celeba_sample / "img_align_celeba" / name, f"img_align_celeba/{name}")
        identities = (celeba_sample / "identity_CelebA.txt").read_text().splitlines()[:40]
        zipped.writestr("identity_CelebA.txt", "\n".join(identities))
    cfg = make_config("data=folder", f"data.path={archive}", "data.resolution=32")
    report = run_stages(cfg)
    arrays, index = packed(cfg)
    assert report["images_packed"] == 40
    assert all("::img_align_celeba/" in row["path"] and row["identity"] for row in index)
    assert arrays["train"].shape[1:] == (32, 32, 3)


def test_too_few_images_for_the_splits_is_a_clear_error(
    make_config, celeba_sample: Path, tmp_path: Path
) -> None:
    folder = link_images(
        celeba_sample / "img_align_celeba", tmp_path / "two", ["000001.jpg", "000002.jpg"]
    )
    cfg = make_config("data=folder", f"data.path={folder}")
    download.run(cfg)
    with pytest.raises(ValueError, match="would be empty"):
        split.run(cfg)
