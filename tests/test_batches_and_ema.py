"""The data order, the flips, rank slices and the EMA: the guarantees the loop rests on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from face_generation.data.packed import features_dir, load_feature_split
from face_generation.runtime.family import IMAGES, Batch, RowInput
from face_generation.training.data import PackedBatches, batch_flips, batch_rows, upload
from face_generation.training.ema import EMA
from face_generation.training.loop import train
from face_generation.training.tracker import NullTracker
from tests.faces import RESOLUTION, SPLIT_SIZES, config, write_packed
from tests.tiny_family import TinyFamily, write_features

CPU = torch.device("cpu")


def random_images(count: int, size: int = 8) -> np.ndarray:
    """Distinct uint8 N×H×W×3 rows: any mix-up of rows or pixels shows."""
    return np.random.default_rng(count).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_batches_cover_each_epoch_and_restart_at_any_step() -> None:
    images = random_images(48)
    batches = PackedBatches({"images": images}, 16, seed=3, hflip=True, device=CPU, on_device=False)
    run = list(batches.iterate(0, 6))
    resumed = list(batches.iterate(3, 6))
    assert len(resumed) == 3
    for original, again in zip(run[3:], resumed, strict=True):
        assert torch.equal(original.images, again.images) and torch.equal(original.rows, again.rows)
    # 48 images, batches of 16: steps 0-2 are one permutation of all rows, so are steps 3-5
    first_epoch = torch.cat([batch.rows for batch in run[:3]])
    assert sorted(first_epoch.tolist()) == list(range(48))
    assert not torch.equal(first_epoch, torch.cat([batch.rows for batch in run[3:]]))
    # the CUDA path (whole array resident on the device, gathered there) gives the same batches
    resident = PackedBatches({"images": images}, 16, seed=3, hflip=True, device=CPU, on_device=True)
    for original, again in zip(run, resident.iterate(0, 6), strict=True):
        assert torch.equal(original.images, again.images) and torch.equal(original.rows, again.rows)
    batch = run[0]
    assert batch.images.shape == (16, 3, 8, 8) and batch.images.dtype == torch.float32
    expected = torch.from_numpy(images[batch.rows.numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1
    flips = batch_flips(16, seed=3, step=0, hflip=True)
    for i in range(16):
        assert torch.allclose(batch.images[i], expected[i].flip(2) if flips[i] else expected[i])


def test_batch_rows_span_epoch_boundaries() -> None:
    rows = np.concatenate([batch_rows(5, 4, seed=0, step=step) for step in range(5)])
    assert all(sorted(rows[i : i + 5].tolist()) == list(range(5)) for i in range(0, 20, 5))
    assert len({rows[i : i + 5].tobytes() for i in range(0, 20, 5)}) == 4  # a new order each epoch
    assert not np.array_equal(batch_rows(5, 4, seed=1, step=0), rows[:4])  # and for each seed


def test_the_order_is_the_same_in_every_version() -> None:
    """A checkpoint resumed by a later version of the code must see the batches the run would
    have seen: the order is pinned here (a change to it is a change of the checkpoint format)."""
    assert batch_rows(10, 4, seed=0, step=0).tolist() == [4, 6, 2, 7]
    assert batch_rows(10, 4, seed=0, step=3).tolist() == [6, 3, 4, 8]
    assert batch_flips(8, seed=0, step=0, hflip=True).tolist() == [0, 0, 0, 0, 1, 1, 0, 1]
    assert batch_flips(8, seed=0, step=3, hflip=True).tolist() == [0, 0, 1, 0, 1, 0, 1, 1]


def test_pixels_map_to_minus_one_and_one_exactly() -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] = 255
    batches = PackedBatches({"images": images}, 2, 0, hflip=False, device=CPU, on_device=False)
    batch = next(batches.iterate(0, 1))
    assert {float(batch.images[i].min()) for i in range(2)} == {-1.0, 1.0}
    assert {float(batch.images[i].max()) for i in range(2)} == {-1.0, 1.0}


def test_upload_copies_every_chunk() -> None:
    array = random_images(10)
    assert torch.equal(upload(array, CPU, chunk_rows=3), torch.from_numpy(array))


def test_flips_mirror_about_half_of_each_batch_and_change_with_the_step() -> None:
    patterns = [batch_flips(256, seed=7, step=step, hflip=True) for step in range(20)]
    shares = [pattern.mean() for pattern in patterns]
    assert all(0.35 < share < 0.65 for share in shares), shares  # binomial(256, ½): ±4.4σ
    assert len({pattern.tobytes() for pattern in patterns}) == 20  # a new pattern every step
    assert np.array_equal(patterns[3], batch_flips(256, seed=7, step=3, hflip=True))
    assert not np.array_equal(patterns[3], batch_flips(256, seed=8, step=3, hflip=True))
    assert not batch_flips(256, seed=7, step=3, hflip=False).any()


@pytest.mark.parametrize("on_device", [False, True])
def test_a_flipped_row_flips_every_array_by_its_own_policy(on_device: bool) -> None:
    count = 32
    rng = np.random.default_rng(0)
    arrays = {
        "images": rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8),
        "crops": rng.integers(0, 256, (count, 4, 4, 3), dtype=np.uint8),
        "maps": rng.standard_normal((count, 2, 4, 4)).astype(np.float32),
        "vectors": rng.standard_normal((count, 5)).astype(np.float32),
    }
    inputs = (
        IMAGES,
        RowInput("crops", flip="image", placement="cpu"),
        RowInput("maps", flip="map"),
        RowInput("vectors", flip="none"),
    )
    batches = PackedBatches(arrays, 16, 1, True, CPU, on_device=on_device, inputs=inputs)
    batch = next(batches.iterate(0, 1))
    flips = batch_flips(16, seed=1, step=0, hflip=True)
    rows = batch.rows.numpy()
    for i, (row, flipped) in enumerate(zip(rows, flips, strict=True)):
        expected_map = arrays["maps"][row][..., ::-1] if flipped else arrays["maps"][row]
        assert np.array_equal(batch.features["maps"][i].numpy(), expected_map)
        expected_crop = arrays["crops"][row][:, ::-1] if flipped else arrays["crops"][row]
        assert np.array_equal(batch.features["crops"][i].numpy(), expected_crop)
        assert np.array_equal(batch.features["vectors"][i].numpy(), arrays["vectors"][row])
        image = arrays["images"][row][:, ::-1] if flipped else arrays["images"][row]
        expected_image = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.allclose(batch.images[i], expected_image)


def test_ranks_split_one_global_batch_order() -> None:
    images = np.zeros((40, 8, 8, 3), np.uint8)
    whole = PackedBatches({"images": images}, 12, 5, hflip=True, device=CPU, on_device=False)
    parts = [
        PackedBatches(
            {"images": images},
            12,
            5,
            hflip=True,
            device=CPU,
            on_device=False,
            rank=rank,
            world_size=4,
        )
        for rank in range(4)
    ]
    for step in range(6):
        rows, flips = whole.rows_and_flips(step)
        shares = [part.rows_and_flips(step) for part in parts]
        assert [len(r) for r, _ in shares] == [3, 3, 3, 3]  # an equal share each
        assert np.array_equal(np.concatenate([r for r, _ in shares]), rows)
        assert np.array_equal(np.concatenate([f for _, f in shares]), flips)
    with pytest.raises(ValueError, match="divisible"):
        PackedBatches({"images": images}, 6, 5, True, CPU, False, rank=0, world_size=4)
    for misaligned in ({"images": images, "maps": images[:5]}, {"maps": images}):
        with pytest.raises(ValueError, match="must include 'images' and be row-aligned"):
            PackedBatches(misaligned, 8, 5, True, CPU, False)
    with pytest.raises(ValueError, match=r"arrays \['maps'\] have no RowInput"):
        PackedBatches({"images": images, "maps": images}, 8, 5, True, CPU, False)
    assert np.array_equal(whole.rows_and_flips(2)[0], batch_rows(40, 12, seed=5, step=2))


def test_the_ema_follows_the_weights_by_the_configured_decay() -> None:
    network = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        network.weight.fill_(0.0)
    ema = EMA(network, decay=0.9)
    average = 0.0
    for step in range(1, 30):
        with torch.no_grad():
            network.weight.fill_(float(step))
        ema.update(network, step)
        decay = min(0.9, (1 + step) / (10 + step))  # the documented warm-up of the decay
        average = decay * average + (1 - decay) * step
        assert ema.module.weight[0, 0].item() == pytest.approx(average, rel=1e-6)
    assert ema.module.weight[0, 0].item() != 29.0  # behind the weights, not equal to them
    assert not any(p.requires_grad for p in ema.module.parameters())
    for outside in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
            EMA(network, decay=outside)


def test_buffers_are_copied_not_averaged_and_a_zero_decay_copies_everything() -> None:
    network = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    half, zero = EMA(network, decay=0.5), EMA(network, decay=0.0)
    with torch.no_grad():
        network[0].weight.add_(1.0)
    network(torch.randn(8, 2))  # a training-mode forward moves BatchNorm's running statistics
    half.update(network, step=50)
    zero.update(network, step=50)
    averaged = half.state_dict()
    for name, buffer in network.named_buffers():
        assert torch.equal(averaged[name], buffer), name
    assert torch.allclose(half.module[0].weight, network[0].weight - 0.5)  # halfway: +1 moved
    current = network.state_dict()
    for name, average in zero.state_dict().items():
        assert torch.equal(average, current[name]), name


def test_the_batches_training_receives_are_flipped_afresh_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `train()` hands a family (not batch_flips on its own): each face mirrored or not,
    with its feature map mirrored alike, and a new choice of mirrored rows at every step."""
    data = write_packed(tmp_path / "data")
    write_features(data, RESOLUTION, SPLIT_SIZES)
    received: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    step = TinyFamily.train_step

    def recording_step(self: TinyFamily, batch: Batch, at: int) -> dict[str, torch.Tensor]:
        received.append((batch.rows.clone(), batch.images.clone(), batch.features["tiny/pyramid"]))
        return step(self, batch, at)

    monkeypatch.setattr(TinyFamily, "train_step", recording_step)
    train(config("tiny", data, tmp_path / "models", "train.steps=8"), NullTracker())

    packed = torch.from_numpy(np.load(data / "packed" / str(RESOLUTION) / "train.npy"))
    faces = packed.permute(0, 3, 1, 2).float() / 127.5 - 1
    features = features_dir(data, RESOLUTION)
    maps = torch.from_numpy(np.array(load_feature_split(features, "tiny/pyramid", "train", 48)))
    patterns = []
    for rows, images, pyramid in received:
        flipped = torch.tensor(
            [not torch.equal(image, faces[row]) for row, image in zip(rows, images, strict=True)]
        )
        assert torch.equal(
            images, torch.where(flipped[:, None, None, None], faces[rows].flip(3), faces[rows])
        )
        assert torch.equal(
            pyramid, torch.where(flipped[:, None, None, None], maps[rows].flip(3), maps[rows])
        )
        patterns.append(tuple(flipped.tolist()))
    assert len(received) == 8 and len(set(patterns)) == 8  # a new choice every step
    share = sum(sum(pattern) for pattern in patterns) / (8 * len(patterns[0]))
    assert 0.3 < share < 0.7  # about half the rows mirrored
