"""The features stages: arrays row-aligned with the packed faces, one folder per network.

    data/features/<res>/labels/      --only labels    (stage `labels`): identity codes and each
                                     row's partner face (features/labels.py)
    data/features/<res>/<backbone>/  --only backbone  (stage `features`): embedding (N×D), and
                                     pyramid_<g> (N×C×g×g) for each of features.grids
                                     (features/pyramid.py)
    data/features/<res>/<encoder>/   --only encoder   (stage `identity`): identity, N×D unit
                                     vectors (dlib_rows.py for dlib)

for every split, each network folder with `ok` (N bool: the rows it failed on are False and
hold zeros; nothing is dropped) and meta.json (features/store.py: written last, the folder
renamed into place at the end). Floats are stored as `features.dtype` (float16).

Speed: whole batches through the network under inference mode, in channels_last on the CPU,
pooled and cast on the device, written straight into memory-mapped .npy files; dlib, which
takes one face at a time, runs in `encoder.workers` processes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from face_generation.data.packed import features_dir, load_split, read_meta
from face_generation.data.tables import SPLITS, packed_dir, read_table
from face_generation.features import labels as identity_labels
from face_generation.features.store import FeatureFolder, file_sha256

# torch is imported inside the functions that use it: the labels part, and the processes that
# run dlib (which import this module again), start without it.
PARTS = ("labels", "backbone", "encoder")
STAGES = {"labels": "labels", "backbone": "features", "encoder": "identity"}


def packed_inputs(cfg: DictConfig) -> tuple[dict[str, np.ndarray], str]:
    """Every packed split (memory-mapped) and the data hash they were packed with."""
    packed = packed_dir(cfg)
    resolution = int(cfg.data.resolution)
    splits = {split: load_split(packed, split, resolution) for split in SPLITS}
    return splits, str(read_meta(packed).get("data_hash", "unknown"))


def meta_of(cfg: DictConfig, part: str, data_hash: str, network: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": STAGES[part],
        "resolution": int(cfg.data.resolution),
        "data_hash": data_hash,
        "network": network,
    }


# --- labels ------------------------------------------------------------------------------


def write_labels(
    features: Path,
    faces: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    meta: dict[str, Any],
    seed: int,
) -> Path:
    """labels/{identity,partner_row,partner}/<split>.npy from each split's identity codes."""
    with FeatureFolder(features, "labels") as folder:
        for split, codes in labels.items():
            partners = identity_labels.partner_rows(codes, seed)
            folder.create("identity", split, codes.shape, np.int64)[:] = codes
            folder.create("partner_row", split, partners.shape, np.int64)[:] = partners
            images = folder.create("partner", split, faces[split].shape, np.uint8)
            for start in range(0, len(partners), 4096):  # a chunk at a time: never all in RAM
                images[start : start + 4096] = faces[split][partners[start : start + 4096]]
            images.flush()
        known = {split: int((codes >= 0).sum()) for split, codes in labels.items()}
        return folder.commit({**meta, "rows_with_identity": known})


def labels_part(cfg: DictConfig) -> Path:
    faces, data_hash = packed_inputs(cfg)
    index = read_table(packed_dir(cfg) / "index.csv", "pack")
    labels = identity_labels.identity_codes(index, SPLITS)
    for split, codes in labels.items():
        if len(codes) != len(faces[split]):
            raise ValueError(
                f"{packed_dir(cfg) / 'index.csv'} lists {len(codes)} {split} rows but "
                f"{split}.npy holds {len(faces[split])}: rerun the pack stage"
            )
    network = {"name": "labels", "source": "index.csv identity column"}
    meta = meta_of(cfg, "labels", data_hash, network)
    features = features_dir(Path(cfg.paths.data), int(cfg.data.resolution))
    return write_labels(features, faces, labels, meta, int(cfg.features.partner_seed))


# --- networks ------------------------------------------------------------------------------


def network_description(settings: DictConfig, network: Any) -> dict[str, Any]:
    """What meta.json and the summary say about a network: its config, what it is, its weights."""
    return {
        "name": str(settings.name),
        "network": str(network.name),
        "cache_key": str(network.cache_key),
        "weights_sha256": file_sha256(network.weights_files),
        "config": OmegaConf.to_container(settings, resolve=True),
    }


def forward_batches(network: Any, images: np.ndarray, batch_size: int) -> Iterator[tuple[int, Any]]:
    """(first row, the network's Features) for consecutive batches, without gradients."""
    import torch

    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            yield start, network.forward(network.preprocess(batch))


def finite_rows(*arrays: Any) -> Any:
    """N bool: the rows finite in every array (torch tensors, rows first)."""
    import torch

    return torch.stack([a.flatten(1).isfinite().all(dim=1) for a in arrays]).all(dim=0)


def prepare_torch(cfg: DictConfig) -> Any:
    """The device of `features.device`, and `features.threads` CPU threads when set."""
    from face_generation.runtime.device import pick_device, use_threads

    use_threads(cfg.features.threads or None)
    return pick_device(str(cfg.features.device))


# --- backbone pyramids -----------------------------------------------------------------------


def fit_pyramid_pca(
    network: Any, train: np.ndarray, grids: Sequence[int], sources: Sequence[int], cfg: DictConfig
) -> list[Any] | None:
    """Per level, a channel PCA fitted on the first `pca_fit_images` train faces (None: keep
    every channel)."""
    from face_generation.features.pyramid import ChannelCovariance, pool_levels

    dims = cfg.features.pyramid_dims
    if dims is None:
        return None
    if len(dims) != len(grids):
        raise ValueError(
            f"features.pyramid_dims {list(dims)} needs one entry per grid {list(grids)}"
        )
    covariances: list[ChannelCovariance] = []
    fit = train[: int(cfg.features.pca_fit_images)]
    for _, features in forward_batches(network, fit, int(cfg.features.batch_size)):
        levels = pool_levels(features.pyramid, grids, sources)
        covariances = covariances or [ChannelCovariance(level.shape[1]) for level in levels]
        for covariance, level in zip(covariances, levels, strict=True):
            covariance.add(level.cpu())
    return [covariance.pca(int(dim)) for covariance, dim in zip(covariances, dims, strict=True)]


def backbone_part(cfg: DictConfig) -> Path:
    import torch

    from face_generation.features.pyramid import level_sources, pool_levels
    from face_generation.networks.backbone import load_pyramid_backbone

    device = prepare_torch(cfg)
    faces, data_hash = packed_inputs(cfg)
    settings, grids = cfg.backbone, [int(grid) for grid in cfg.features.grids]
    network = load_pyramid_backbone(settings).to(device)
    dtype, batch_size = np.dtype(str(cfg.features.dtype)), int(cfg.features.batch_size)
    _, probe = next(forward_batches(network, faces["train"][:1], 1))
    sources = level_sources([level.shape[-1] for level in probe.pyramid], grids)
    pcas = fit_pyramid_pca(network, faces["train"], grids, sources, cfg)
    channels = [
        pcas[i].components.shape[1] if pcas else probe.pyramid[source].shape[1]
        for i, source in enumerate(sources)
    ]
    if pcas:
        pcas = [pca.to(device) for pca in pcas]
    features = features_dir(Path(cfg.paths.data), int(cfg.data.resolution))
    failed: dict[str, int] = {}
    with FeatureFolder(features, str(settings.name)) as folder:
        for split, images in faces.items():
            count = len(images)
            embedding = folder.create("embedding", split, (count, probe.embedding.shape[1]), dtype)
            levels_out = [
                folder.create(f"pyramid_{grid}", split, (count, width, grid, grid), dtype)
                for grid, width in zip(grids, channels, strict=True)
            ]
            ok = folder.create("ok", split, (count,), bool)
            for start, output in forward_batches(network, images, batch_size):
                levels = pool_levels(output.pyramid, grids, sources)
                if pcas:
                    levels = [pca.project(level) for pca, level in zip(pcas, levels, strict=True)]
                stored = [t.to(getattr(torch, dtype.name)) for t in (output.embedding, *levels)]
                good = finite_rows(*stored)  # a value beyond float16's range is a failed row
                stop = start + len(good)
                for target, values in zip((embedding, *levels_out), stored, strict=True):
                    keep = good.view(-1, *[1] * (values.ndim - 1))
                    target[start:stop] = values.where(keep, 0).cpu().numpy()
                ok[start:stop] = good.cpu().numpy()
            failed[split] = int(count - ok.sum())
            for array in (embedding, *levels_out, ok):
                array.flush()
        for grid, pca in zip(grids, pcas or [], strict=False):
            pca.save(folder.side_file(f"pyramid_{grid}", "pca.npz"))
        description = network_description(settings, network)
        meta = meta_of(cfg, "backbone", data_hash, description)
        pyramid = {
            "grids": grids,
            "source_maps": [list(probe.pyramid[source].shape[1:]) for source in sources],
            "pca_dims": list(channels) if pcas else None,
            "pca_fitted_on": f"train[:{cfg.features.pca_fit_images}]" if pcas else None,
        }
        return folder.commit({**meta, "pyramid": pyramid, "failed_rows": failed})


# --- identity embeddings ------------------------------------------------------------------------


def dlib_identity(
    cfg: DictConfig, folder: FeatureFolder, faces: dict[str, np.ndarray]
) -> tuple[dict[str, Any], dict]:
    """dlib descriptors of every split into `folder` (dlib_rows.py); the network's description
    and how each split's faces were described."""
    from face_generation.features.dlib_rows import DlibPool
    from face_generation.networks.dlib_face import DlibFaceRecogniser, dlib_files
    from face_generation.networks.face_boxes import FaceBoxes

    settings = cfg.encoder
    files = dlib_files(settings)
    arguments = (
        *files,
        str(settings.face_box),
        list(settings.fallback_box),
        int(settings.detector_upsample),
    )
    counts: dict[str, dict[str, int]] = {}
    dtype = np.dtype(str(cfg.features.dtype))
    with DlibPool(arguments, int(settings.workers), int(settings.chunk_size)) as pool:
        for split, images in faces.items():
            identity = folder.create("identity", split, (len(images), 128), dtype)
            ok = folder.create("ok", split, (len(images),), bool)
            tally: Counter[str] = Counter()
            for start, described in pool.describe(images):
                identity[start : start + len(described.ok)] = described.vectors
                ok[start : start + len(described.ok)] = described.ok
                tally.update(described.counts)
            counts[split] = dict(tally)
            identity.flush()
            ok.flush()
    boxes = FaceBoxes.from_config(settings).cache_key
    description = {
        "name": str(settings.name),
        "network": DlibFaceRecogniser.name,
        "cache_key": f"{DlibFaceRecogniser.name}-{boxes}",
        "weights_sha256": file_sha256(files),
        "config": OmegaConf.to_container(settings, resolve=True),
    }
    return description, counts


def torch_identity(
    cfg: DictConfig, folder: FeatureFolder, faces: dict[str, np.ndarray], device: Any
) -> tuple[dict[str, Any], dict]:
    """FaceNet's or the fine-tuned encoder's unit embeddings of every split, in batches."""
    import torch
    import torch.nn.functional as F

    from face_generation.features.conditions import identity_network

    settings = cfg.encoder
    network: Any = identity_network(settings)
    network.to(device)
    dtype = getattr(torch, str(cfg.features.dtype))
    counts: dict[str, dict[str, int]] = {}
    for split, images in faces.items():
        identity = folder.create(
            "identity", split, (len(images), network.num_features), dtype=str(cfg.features.dtype)
        )
        ok = folder.create("ok", split, (len(images),), bool)
        for start, output in forward_batches(network, images, int(cfg.features.batch_size)):
            vectors = F.normalize(output.embedding.float(), dim=1)
            good = finite_rows(vectors) & (output.embedding.float().norm(dim=1) > 0)
            stop = start + len(good)
            identity[start:stop] = vectors.where(good[:, None], 0).to(dtype).cpu().numpy()
            ok[start:stop] = good.cpu().numpy()
        counts[split] = {"embedded": int(ok.sum()), "failed": int(len(ok) - ok.sum())}
        identity.flush()
        ok.flush()
    if settings.name == "facenet":
        counts["faces_detected"] = {"all": network.boxes.faces_detected}
    return network_description(settings, network), counts


def encoder_part(cfg: DictConfig) -> Path:
    faces, data_hash = packed_inputs(cfg)
    features = features_dir(Path(cfg.paths.data), int(cfg.data.resolution))
    settings = cfg.encoder
    with FeatureFolder(features, str(settings.name)) as folder:
        if settings.name == "dlib":
            description, counts = dlib_identity(cfg, folder, faces)
        else:
            description, counts = torch_identity(cfg, folder, faces, prepare_torch(cfg))
        failed = {split: int(counts[split].get("failed", 0)) for split in faces}
        meta = meta_of(cfg, "encoder", data_hash, description)
        return folder.commit({**meta, "how_embedded": counts, "failed_rows": failed})


# --- the stage -------------------------------------------------------------------------------


def run(cfg: DictConfig, parts: Sequence[str] = PARTS) -> dict[str, Path]:
    """Write the feature folders of `parts` (labels, backbone, encoder); their paths."""
    written = {}
    for part in parts:
        started = time.perf_counter()
        folder = {"labels": labels_part, "backbone": backbone_part, "encoder": encoder_part}[part](
            cfg
        )
        written[part] = folder
        print(summary(folder, time.perf_counter() - started))
    return written


def summary(folder: Path, seconds: float) -> str:
    """One line per folder: what was written, its size per image, rows the network failed on."""
    import json

    meta = json.loads((folder / "meta.json").read_text())
    arrays = ", ".join(
        f"{name} {'×'.join(map(str, entry['row_shape'])) or '1'} {entry['dtype']}"
        for name, entry in sorted(meta["arrays"].items())
    )
    failed = sum(meta.get("failed_rows", {}).values())
    return (
        f"[{meta['stage']}] {folder}: {arrays}; {meta['bytes_per_image']} bytes per image; "
        f"{failed} rows failed (flagged in ok), {seconds:.1f} s"
    )
