"""The official aligned CelebA files, downloaded with gdown and verified by size and MD5.

`download_celeba(cfg.data.download, dest)` fetches img_align_celeba.zip (1.4 GB),
list_eval_partition.txt and identity_CelebA.txt into `dest`:
  * a file already in `dest` with the right size and MD5 is used as it is (no network);
  * each download goes to `<name>.unverified` (gdown writes `<name>.unverified*.part` while it
    runs), is checked, and only then renamed to `<name>`;
  * an interrupted download resumes from its .part file with an HTTP Range request (gdown's
    `resume=True`, for Google Drive and plain HTTP servers alike);
  * before anything is downloaded, one request checks that the host answers within
    `timeout` seconds, so an offline machine fails in seconds with what to do instead.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import gdown
import requests
from omegaconf import DictConfig
from tqdm import tqdm

UNVERIFIED_SUFFIX = ".unverified"
HASH_CHUNK_BYTES = 8 * 1024 * 1024  # read size for hashing; memory use, not a tunable
QUOTA_MESSAGE = "Too many users have viewed or downloaded this file recently"


class CelebADownloadError(RuntimeError):
    """CelebA could not be downloaded or verified; the message says what to do instead."""


def file_md5(path: Path) -> str:
    """MD5 of a file, read in chunks with a progress bar (the images zip is 1.4 GB)."""
    digest = hashlib.md5(usedforsecurity=False)
    with (
        path.open("rb") as stream,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"celeba: md5 {path.name}",
            leave=False,
        ) as progress,
    ):
        for chunk in iter(lambda: stream.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
            progress.update(len(chunk))
    return digest.hexdigest()


def verification_problem(path: Path, size: int, md5: str) -> str | None:
    """None when the file has the expected size and MD5, else what differs (size first: cheap)."""
    actual_size = path.stat().st_size
    if actual_size != size:
        return f"size is {actual_size} bytes, expected {size} bytes"
    actual_md5 = file_md5(path)
    if actual_md5 != md5:
        return f"MD5 is {actual_md5}, expected {md5}"
    return None


def what_to_do(dest: Path, names: Iterable[str]) -> str:
    """The ways on without this download, appended to every error."""
    return (
        "To go on without downloading:\n"
        "  - use a copy of CelebA you already have: data=folder data.path=/path/to/celeba "
        "(a folder or .zip in CelebA's layout: img_align_celeba/*.jpg, "
        "list_eval_partition.txt, identity_CelebA.txt);\n"
        f"  - or get the files by hand (CelebA's project page links its Google Drive folder) "
        f"and put them in {dest} as {', '.join(names)}; files there with the official size "
        "and MD5 are used without downloading.\n"
        f'If Google Drive says "{QUOTA_MESSAGE}", the file\'s daily download quota is used up: '
        "rerun later (the quota resets within about a day; a partial download resumes), or "
        "download the file in a browser signed in to Google and put it in the folder above."
    )


def check_reachable(url: str, timeout: float, dest: Path, names: Iterable[str]) -> None:
    """Fail within `timeout` seconds when the download host does not answer at all.

    Any HTTP answer counts as reachable (gdown sorts out the rest). The request runs in a
    thread so that a hanging DNS lookup, which requests' timeout does not cover, cannot
    stall it either.
    """
    failure: list[str] = []

    def probe() -> None:
        try:
            requests.head(url, timeout=timeout, allow_redirects=False).close()
        except requests.RequestException as error:
            failure.append(str(error))

    thread = threading.Thread(target=probe, name="celeba-reachability", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        failure.append(f"no answer within {timeout} s")
    if failure:
        host = urlsplit(url).netloc
        raise CelebADownloadError(
            f"Cannot download CelebA: the network is unreachable from here ({host} did not "
            f"answer: {failure[0]}).\n{what_to_do(dest, names)}"
        )


def ensure_free_space(dest: Path, name: str, size: int) -> None:
    """Refuse to start a download the disk cannot hold (counting bytes a .part already has)."""
    partial = sum(part.stat().st_size for part in dest.glob(f"{name}{UNVERIFIED_SUFFIX}*.part"))
    free = shutil.disk_usage(dest).free
    if free < size - partial:
        raise CelebADownloadError(
            f"Not enough disk space for {name}: {size - partial} bytes still to download, "
            f"{free} free in {dest}. Free some space or choose another data directory."
        )


def gdown_fetch(url: str, output: Path, download_cfg: DictConfig, names: list[str]) -> None:
    """gdown's resumable download to `output`, its failures turned into CelebADownloadError."""
    dest = output.parent
    try:
        gdown.download(
            url=url,
            output=str(output),
            quiet=False,
            resume=True,
            timeout=download_cfg.timeout,
            retries=download_cfg.retries,
        )
        return
    except gdown.FileURLRetrievalError as error:
        reason = (
            "Google Drive's download quota for this file is used up for now"
            if QUOTA_MESSAGE in str(error)
            else "Google Drive did not hand out the file"
        )
        message = f"Cannot download {output.name.removesuffix(UNVERIFIED_SUFFIX)}: {reason}."
        cause: Exception = error
    except (gdown.DownloadError, requests.RequestException, OSError) as error:
        message = f"Downloading {url} into {output} failed."
        cause = error
    raise CelebADownloadError(
        f"{message}\ngdown said: {cause}\nBytes received so far stay in "
        f"{output}*.part; rerunning resumes from them (delete them to start over).\n"
        f"{what_to_do(dest, names)}"
    ) from cause


def download_celeba(download_cfg: DictConfig, dest: Path) -> dict[str, Path]:
    """Download CelebA's aligned-images zip, list_eval_partition.txt and identity_CelebA.txt
    into dest (resumable; verified by size and MD5); return {file name: path}."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = list(download_cfg.files)
    paths: dict[str, Path] = {}
    checked_network = False
    for name in names:
        spec = download_cfg.files[name]
        final = dest / name
        if final.exists():
            problem = verification_problem(final, spec.size, spec.md5)
            if problem is not None:
                line_endings = (
                    " (the official text files have CRLF line endings; a copy converted to LF "
                    "differs)"
                    if name.endswith(".txt")
                    else ""
                )
                raise CelebADownloadError(
                    f"{final} is not the official {name}: its {problem}{line_endings}. "
                    "Delete it and rerun to download the official file, or use your copy as it "
                    "is with data=folder data.path=/path/to/celeba."
                )
            paths[name] = final
            continue
        unverified = dest / f"{name}{UNVERIFIED_SUFFIX}"
        if not unverified.exists():
            url = download_cfg.url_template.format(id=spec.id)
            if not checked_network:
                check_reachable(url, download_cfg.timeout, dest, names)
                checked_network = True
            ensure_free_space(dest, name, spec.size)
            gdown_fetch(url, unverified, download_cfg, names)
        problem = verification_problem(unverified, spec.size, spec.md5)
        if problem is not None:
            raise CelebADownloadError(
                f"The downloaded {name} is not the official file: its {problem}. It is kept "
                f"as {unverified}, not as {final}; delete {unverified} and rerun to download "
                "it again. If that fails the same way, the file on Google Drive or the "
                f"configured md5/size changed.\n{what_to_do(dest, names)}"
            )
        unverified.replace(final)
        paths[name] = final
    return paths
