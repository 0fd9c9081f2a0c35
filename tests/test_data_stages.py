"""The data stages (download -> split -> crop -> pack) on real faces and on bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from PIL import Image

from face_generation.data import crop, download, fetch, images, pack, split
from face_generation.data.download import UTKFACE_NAME
from face_generation.data.tables import (
    SPLITS,
    crops_path,
    packed_dir,
    skipped_path,
    summary_path,
)
from face_generation.errors import UserError
from tests.bad_images import save_oriented, save_png16, write_bomb_png, write_huge_png
from tests.conftest import REPO_ROOT, link_images, path_overrides


def run_stages(cfg) -> dict:
    fetch.run(cfg)
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


def test_fetch_writes_the_raw_faces_once_and_the_download_stage_lists_them(make_config) -> None:
    cfg = make_config()
    with pytest.raises(
        UserError, match=r"lfw_subset is missing: run .*data\.fetch.*dvc pull data\.dvc"
    ):
        download.run(cfg)  # the stage never fetches: data/sources is data.dvc's, not its output
    folder = fetch.run(cfg) / "lfw_subset"
    faces = sorted(folder.iterdir())
    assert [path.name for path in faces] == [f"lfw_{i:03d}.png" for i in range(100)]
    written = {path: path.stat().st_mtime_ns for path in faces}
    original = faces[5].read_bytes()
    faces[5].write_bytes(b"changed by hand")
    fetch.run(cfg)  # the same bytes are left alone (DVC's links too); a changed file restored
    assert faces[5].read_bytes() == original
    assert {path: path.stat().st_mtime_ns for path in faces if path != faces[5]} == {
        path: when for path, when in written.items() if path != faces[5]
    }
    rows = download.run(cfg)
    assert sorted(row["path"] for row in rows) == [str(path) for path in faces]


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
        for i in range(1, 27)
    ]
    for i, face in enumerate(faces[:20]):
        save(face, folder / f"good_{i:02d}.jpg")
    data = (folder / "good_00.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is a text file, not a picture\n")
    (folder / "empty.jpg").write_bytes(b"")  # an interrupted copy
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
    # What the reliability issue found: sizes that only the header tells, EXIF orientation,
    # and 16-bit samples, whether they span 0..65535 or hold 8-bit values (narrow).
    write_bomb_png(folder / "bomb.png")
    write_huge_png(folder / "huge.png", faces[23])
    save(faces[23], folder / "upright.jpg")
    for orientation in (3, 6, 8):
        save_oriented(faces[23], folder / f"exif_{orientation}.jpg", orientation)
    grey = np.asarray(faces[24].convert("L"))
    save(Image.fromarray(grey), folder / "grey_8_bit.png")
    for suffix in ("png", "tif"):
        save(Image.fromarray(grey.astype(np.uint16)), folder / f"grey_16_bit_narrow.{suffix}")
        save(Image.fromarray(grey.astype(np.uint16) * 257), folder / f"grey_16_bit_full.{suffix}")
    colour = np.asarray(faces[25])
    save(faces[25], folder / "colour_8_bit.png")
    save_png16(colour.astype(np.uint16), folder / "colour_16_bit_narrow.png")
    save_png16(colour.astype(np.uint16) * 257, folder / "colour_16_bit_full.png")
    return folder


def test_bad_inputs_are_skipped_and_counted(make_config, bad_folder: Path) -> None:
    cfg = make_config(
        "data=folder", f"data.path={bad_folder}", "data.resolution=32", "data.crop.min_size=16"
    )
    report = run_stages(cfg)
    assert report["skipped"] == {
        "corrupt": 1,  # truncated.jpg
        "empty": 1,  # empty.jpg
        "not_an_image": 1,  # notes.jpg
        "too_small": 1,  # one_pixel.png
        "too_large": 2,  # bomb.png, huge.png: refused by their headers
        "unreadable": 1,  # loop.jpg
        "duplicate": 1,  # duplicate_of_good_01.jpg
    }
    assert report["images_found"] == 44 and report["images_packed"] == 36
    listed = {  # which file each stage skipped and why, beside its table
        Path(row["path"]).name: row["reason"]
        for table in (
            Path(cfg.paths.data) / "raw" / "manifest.csv",
            crops_path(cfg),
            packed_dir(cfg) / "index.csv",
        )
        for row in csv.DictReader(skipped_path(table).open())
    }
    assert listed == {"truncated.jpg": "corrupt", "empty.jpg": "empty", "notes.jpg": "not_an_image",
                      "one_pixel.png": "too_small", "bomb.png": "too_large",
                      "huge.png": "too_large", "loop.jpg": "unreadable"}  # fmt: skip
    crops = json.loads(summary_path(crops_path(cfg)).read_text())
    assert crops["skipped"]["too_large"] == 2
    assert not list(packed_dir(cfg).glob("*.tmp.npy"))
    arrays, index = packed(cfg)
    faces = {Path(row["path"]).name: arrays[row["split"]][int(row["row"])] for row in index}
    assert faces["alpha.png"].min() == 255  # transparent -> white
    assert faces["sixteen_bit.png"].min() == 255  # 16-bit full scale -> 255, not clipped garbage
    upright = faces["upright.jpg"].astype(float)
    for orientation in (3, 6, 8):  # packed as shown; 6 and 8 are not refused as corrupt either
        turned = faces[f"exif_{orientation}.jpg"].astype(float)
        assert np.abs(turned - upright).mean() < 3, orientation  # JPEG noise; upside down: about 50
    for name in ("grey_16_bit_narrow", "grey_16_bit_full"):
        for suffix in ("png", "tif"):
            np.testing.assert_array_equal(faces[f"{name}.{suffix}"], faces["grey_8_bit.png"])
    for name in ("colour_16_bit_narrow.png", "colour_16_bit_full.png"):
        np.testing.assert_array_equal(faces[name], faces["colour_8_bit.png"])
    grey = faces["grey.jpg"].astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 2
    cmyk, reference = faces["cmyk.jpg"].astype(float), faces["good_02.jpg"].astype(float)
    assert cmyk.std() > 20 and reference.std() > 20  # decoded to a real picture, not noise


def header_or_reason(
    path: str, prefix_size: int | None, max_pixels: int
) -> images.ImageHeader | str:
    """The header read from a prefix of the file, or by PIL from all of it (None)."""
    try:
        if prefix_size is None:
            return images.read_header(images.read_bytes(path), max_pixels)
        return images.read_file_header(path, prefix_size, max_pixels)
    except images.ImageError as error:
        return error.reason


def test_file_headers_read_from_a_prefix_match_pil(
    make_config, bad_folder: Path, tmp_path: Path
) -> None:
    max_pixels = make_config().data.max_pixels
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
        found[Path(path).name] = header_or_reason(path, 1024, max_pixels)
        assert found[Path(path).name] == header_or_reason(path, None, max_pixels), path
    long_comment = (bad_folder / "long_comment.jpg").read_bytes()
    assert images.parse_header(long_comment[:1024]) is None  # so PIL read the whole file
    assert found["long_comment.jpg"] == images.ImageHeader(89, 109, "JPEG")
    assert found["cmyk.jpg"] == images.ImageHeader(89, 109, "JPEG")
    assert found["sixteen_bit.png"] == images.ImageHeader(89, 109, "PNG")
    assert found["loop.jpg"] == images.UNREADABLE and found["notes.jpg"] == images.NOT_AN_IMAGE
    assert found["bomb.png"] == found["huge.png"] == images.TOO_LARGE
    # Stored 109 x 89, turned by a quarter when shown: the size as shown, as PIL gives it.
    assert found["exif_6.jpg"] == images.ImageHeader(89, 109, "JPEG", orientation=6)


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


def celeba_folder(
    make_config, celeba_sample: Path, tmp_path: Path, count: int
) -> tuple[Path, DictConfig, list[str]]:
    """A folder of the first `count` CelebA-sample faces, its config, and the command-line
    arguments that give a stage the same config."""
    names = [f"{i:06d}.jpg" for i in range(1, count + 1)]
    folder = link_images(celeba_sample / "img_align_celeba", tmp_path / "faces", names)
    data = ["data=folder", f"data.path={folder}"]
    return folder, make_config(*data), [*path_overrides(tmp_path), *data]


def test_pack_refuses_too_large_images_that_crop_let_through(
    make_config, celeba_sample: Path, tmp_path: Path
) -> None:
    folder, cfg, settings = celeba_folder(make_config, celeba_sample, tmp_path, 20)
    write_bomb_png(folder / "bomb.png")
    download.run(cfg)
    split.run(cfg)
    crop.main([*settings, "data.max_pixels=1000000000"])  # a limit raised for crop alone
    assert json.loads(summary_path(crops_path(cfg)).read_text())["skipped"] == {}
    # pack's own limit, then PIL's (2 x 89 MP), which raises DecompressionBombError.
    for limit in ("40000000", "1000000000"):
        pack.main([*settings, f"data.max_pixels={limit}"])
        report = json.loads((Path(cfg.paths.metrics) / "data.json").read_text())
        assert report["skipped"] == {"too_large": 1} and report["images_packed"] == 20
        assert not list(packed_dir(cfg).glob("*.tmp.npy"))


def test_mtcnn_sees_faces_upright_and_skips_bombs(
    make_config, utkface_sample: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    names = sorted(os.listdir(utkface_sample))[100:109]
    for name, orientation in zip(names, (3, 6, 8) * 3, strict=True):
        save_oriented(Image.open(utkface_sample / name), folder / name, orientation)
    write_bomb_png(folder / "bomb.png")
    cfg = make_config(
        "data=folder",
        f"data.path={folder}",
        "data.crop.method=mtcnn",
        "data.resolution=64",
        "data.split.fractions.train=0.4",
        "data.split.fractions.val=0.3",
        "data.split.fractions.test=0.3",
    )
    report = run_stages(cfg)
    # Every face found: stored sideways or upside down, they are turned upright first.
    assert report["skipped"] == {"too_large": 1} and report["images_packed"] == 9


STAGES = {"download": download, "split": split, "crop": crop, "pack": pack}


@pytest.mark.parametrize(
    ("stage", "overrides", "named"),
    [
        ("download", ["data=folder"], "data.path"),
        ("download", ["data=folder", "data.path={tmp}/missing"], "data.path={tmp}/missing"),
        ("download", ["data=folder", "data.path={tmp}/empty"], "no images found in {tmp}/empty"),
        ("pack", ["data.resolution=0"], "data.resolution=0"),
        ("pack", ["data.resolution=7"], "data.resolution=7"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    stage: str, overrides: list[str], named: str, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    argv = [*path_overrides(tmp_path), *(item.format(tmp=tmp_path) for item in overrides)]
    with pytest.raises(SystemExit) as exited:
        STAGES[stage].main(argv)
    message = exited.value.code  # a message: Python prints it alone and exits with status 1
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith(f"[{stage}] error: ") and named.format(tmp=tmp_path) in message
    assert not (tmp_path / "data" / "packed").exists()  # no 7 x 7 arrays


def run_stage(stage: str, *arguments: str, prefix: tuple[str, ...] = (), **env: str):
    command = [*prefix, sys.executable, "-m", f"face_generation.data.{stage}", *arguments]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_stage_errors_are_one_line_and_a_traceback_on_request(tmp_path: Path) -> None:
    settings = [*path_overrides(tmp_path), "data.resolution=7"]
    result = run_stage("pack", *settings)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "[pack] error: data.resolution=7 cannot be trained on: use a power of two of at least 8 "
        "(the networks halve it down to 4x4), e.g. data.resolution=64"
    ]
    debug = run_stage("pack", *settings, FACE_GENERATION_DEBUG="1")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UserError" in debug.stderr


def permissions_apply() -> tuple[str, ...]:
    """A command prefix under which file permissions hold even for root, who ignores them."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, and without setpriv to drop root's file access")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


@pytest.mark.slow
def test_unwritable_output_folder_is_a_one_line_error(
    make_config, celeba_sample: Path, tmp_path: Path
) -> None:
    _, cfg, settings = celeba_folder(make_config, celeba_sample, tmp_path, 20)
    download.run(cfg)
    split.run(cfg)
    crop.run(cfg)
    output = packed_dir(cfg)
    output.mkdir(parents=True)
    output.chmod(0o555)
    try:
        result = run_stage("pack", *settings, prefix=permissions_apply())
    finally:
        output.chmod(0o755)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"[pack] error: {output}/") and "Permission denied" in line
    assert "paths.data" in line and not list(output.iterdir())


def test_a_split_left_empty_by_crop_stops_pack(
    make_config, celeba_sample: Path, tmp_path: Path
) -> None:
    _, cfg, settings = celeba_folder(make_config, celeba_sample, tmp_path, 30)
    download.run(cfg)
    for row in split.run(cfg):
        if row["split"] == "test":  # every test face too small for crop
            Path(row["path"]).unlink()
            save(Image.new("RGB", (8, 8)), Path(row["path"]), format="JPEG")
    crop.run(cfg)
    with pytest.raises(SystemExit) as exited:
        pack.main(settings)
    message = str(exited.value.code)
    assert message.startswith("[pack] error: no face left in the test split")
    assert "'test': 0" in message and "too_small" in message  # counts per split, and why
    assert not list(packed_dir(cfg).iterdir())  # no arrays, no temporary ones


def test_a_stage_removes_what_a_killed_run_left_and_says_so(
    make_config, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_config()
    data = Path(cfg.paths.data)
    leftovers = [data / "packed" / "32" / "train.tmp.npy", data / "crops.csv.tmp"]
    for path in leftovers:  # what SIGKILL during pack and during crop leave
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1_000_000)
    leftovers.append(data / "sources" / "lfw_subset" / "lfw_007.png.tmp")  # a killed fetch's
    leftovers[-1].parent.mkdir(parents=True)
    leftovers[-1].write_bytes(b"\0" * 1_000_000)
    partial = data / "sources" / "celeba" / "img_align_celeba.zip.unverified.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"resumable")
    fetch.run(cfg)
    assert not any(path.exists() for path in leftovers)
    assert partial.read_bytes() == b"resumable"  # a download resumes from it: kept
    assert f"[fetch] removed 3 temporary file(s) of an interrupted run (3.0 MB) under {data}" in (
        capsys.readouterr().out
    )
