"""The family contract (runtime/family.py), checked for every registered family.

Parametrised over the registry, so a new family is tested by adding it; `tiny` is a family
that exists only in the tests (tests/tiny_family.py) and uses every part of the contract.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_generation.data.packed import features_dir
from face_generation.errors import UserError
from face_generation.evaluation.evaluate_model import evaluate
from face_generation.families.conditioning import ConditionalFamily
from face_generation.inference import main as inference_main
from face_generation.runtime.checkpoint import CheckpointError, load_checkpoint
from face_generation.runtime.device import computes_in_bf16
from face_generation.runtime.family import SAMPLE, Batch
from face_generation.runtime.generator import generate, load_generator, sampling_options
from face_generation.runtime.pixels import to_float_nchw
from face_generation.runtime.registry import (
    UnknownFamilyError,
    family_class,
    family_for,
    family_names,
)
from face_generation.training.data import PackedBatches
from face_generation.training.device import step_context
from face_generation.training.loop import preview_condition, train, training_arrays
from face_generation.training.tracker import NullTracker
from tests.conftest import TrainedModels
from tests.faces import RESOLUTION, config
from tests.unsafe_pickle import RunsCode

FAMILIES = family_names()
SAMPLING = [name for name in FAMILIES if SAMPLE in family_class(name).capabilities]


def family_config(name: str, trained: TrainedModels) -> Any:
    return config(name, trained.data, trained.root / "unused").model


def first_batch(name: str, trained: TrainedModels, precision: str = "auto") -> tuple[Any, Batch]:
    """The family built on the CPU (training in `precision`), and its first training batch."""
    cfg = config(name, trained.data, trained.root / "unused")
    cfg.train.precision = precision
    family_type = family_for(cfg)
    context = step_context(torch.device("cpu"), cfg.train)
    arrays = training_arrays(cfg, family_type, "train")
    batches = PackedBatches(
        arrays,
        batch_size=int(cfg.train.batch_size),
        seed=0,
        hflip=True,
        device=context.device,
        on_device=False,
        inputs=family_type.inputs_of(cfg.model),
    )
    torch.manual_seed(0)
    family = family_type(cfg.model, RESOLUTION, context)
    family.prepare(arrays)  # as the loop does before the first step
    return family, next(batches.iterate(0, 1))


def test_the_registry_knows_the_project_families_and_the_test_one() -> None:
    assert {"vae", "dcgan", "diffusion", "tiny", "echo"} <= set(FAMILIES)
    with pytest.raises(UnknownFamilyError, match=r"model.name='nope'.*known families.*vae"):
        family_class("nope")


@pytest.mark.parametrize("name", FAMILIES)
def test_a_step_trains_the_trained_networks_only(name: str, trained: TrainedModels) -> None:
    family, batch = first_batch(name, trained)
    for declared in family.inputs_of(family_config(name, trained)):
        if declared.name != "images":
            assert len(batch.features[declared.name]) == len(batch.images)
    before = {
        key: [p.detach().clone() for p in network.parameters()]
        for key, network in {**family.networks, **family.frozen}.items()
    }
    metrics = family.train_step(batch, 0)
    assert metrics and all(v.ndim == 0 and torch.isfinite(v) for v in metrics.values())
    for key, network in family.networks.items():
        changed = [
            not torch.equal(a, b) for a, b in zip(before[key], network.parameters(), strict=True)
        ]
        assert any(changed), f"trained network {key} did not change"
    for key, network in family.frozen.items():
        assert all(
            torch.equal(a, b) for a, b in zip(before[key], network.parameters(), strict=True)
        )
    assert set(family.optimizers) <= set(family.networks)


def test_precision_auto_is_bf16_on_cuda_and_float32_on_the_cpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # only named: nothing runs on it
    assert [computes_in_bf16(cpu, p) for p in ("auto", "bf16", "fp32")] == [False, True, False]
    assert [computes_in_bf16(cuda, p) for p in ("auto", "bf16", "fp32")] == [True, True, False]
    with pytest.raises(UserError, match=r"precision 'fp16' is not one of auto, bf16, fp32"):
        computes_in_bf16(cpu, "fp16")


@pytest.mark.parametrize("name", FAMILIES)
def test_train_precision_bf16_computes_the_step_in_bf16_on_float32_weights(
    name: str, trained: TrainedModels
) -> None:
    """bf16 autocasts on the CPU too (fast where it has AMX). Most layers run in bf16 (a family
    may keep a term in float32: cond_gan's R1 penalty)."""
    family, batch = first_batch(name, trained, "bf16")
    seen: list[torch.dtype] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        for network in family.networks.values()
        for module in network.modules()
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    ]
    metrics = family.train_step(batch, 0)
    for hook in hooks:
        hook.remove()
    assert seen.count(torch.bfloat16) > len(seen) / 2, seen
    assert all(torch.isfinite(value) for value in metrics.values())
    assert all(
        p.dtype == torch.float32 for network in family.networks.values()
        for p in network.parameters()
    )  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoints_hold_trained_networks_and_family_state(
    name: str, trained: TrainedModels
) -> None:
    state = load_checkpoint(trained.checkpoints[name], expected_model=name)
    family_type = family_class(name)
    assert state["step"] == 6 and state["generator"] == family_type.generator_key
    family, _ = first_batch(name, trained)
    assert set(state["networks"]) == set(family.networks)  # frozen networks are never saved
    assert set(state["family_state"]) == set(family.state_dict())
    if name == "tiny":
        assert state["family_state"] == {"steps_seen": 6}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_a_resumed_run_equals_an_uninterrupted_one(
    name: str, trained: TrainedModels, tmp_path: Path
) -> None:
    first = train(config(name, trained.data, tmp_path, "train.steps=3"), NullTracker())
    resumed = train(
        config(name, trained.data, tmp_path, "train.resume=auto"), NullTracker(first.run_id)
    )
    assert resumed.step == 6 and resumed.run_id == first.run_id
    expected = load_checkpoint(trained.checkpoints[name])
    actual = load_checkpoint(resumed.checkpoint)
    assert actual["family_state"] == expected["family_state"]
    for key, weights in expected["networks"].items():
        for tensor_name, tensor in weights.items():
            assert torch.equal(tensor, actual["networks"][key][tensor_name]), (key, tensor_name)
    for tensor_name, tensor in (expected["ema"] or {}).items():
        assert torch.equal(tensor, actual["ema"][tensor_name]), f"ema {tensor_name}"


@pytest.mark.parametrize("name", FAMILIES)
def test_the_ema_generator_moved_from_its_initial_weights(
    name: str, trained: TrainedModels
) -> None:
    state = load_checkpoint(trained.checkpoints[name])
    family, _ = first_batch(name, trained)  # initial weights: the same seed as training
    initial = family.networks[family.generator_key].state_dict()
    ema, weights = state["ema"], state["networks"][family.generator_key]
    floats = [key for key, tensor in initial.items() if tensor.is_floating_point()]
    assert any(not torch.equal(ema[key], initial[key]) for key in floats)
    assert any(not torch.equal(ema[key], weights[key]) for key in floats)


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_is_seeded_takes_options_and_refuses_unknown_ones(
    name: str, trained: TrainedModels
) -> None:
    generator = load_generator(trained.checkpoints[name])
    options = sampling_options(generator.family)
    assert options, "every sampling family documents at least one option"

    def draw(seed: int, **chosen: Any) -> torch.Tensor:
        return generator.sample(4, generator=torch.Generator().manual_seed(seed), **chosen)

    images = draw(1)
    assert images.shape == (4, 3, RESOLUTION, RESOLUTION)
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, draw(1)) and not torch.equal(images, draw(2))
    option, default = next(iter(options.items()))
    assert not torch.equal(images, draw(1, **{option: type(default)(default * 0.5)}))
    with pytest.raises(ValueError, match=rf"unknown sampling option.*{option}"):
        draw(1, no_such_option=1)
    if generator.condition is not None:
        cond = preview_condition(
            config(name, trained.data, trained.root / "unused"), generator.family, 4
        )
        conditioned = generator.sample(4, cond=cond, generator=torch.Generator().manual_seed(1))
        assert not torch.equal(images, conditioned)


@pytest.mark.parametrize("name", SAMPLING)
def test_sampling_in_bf16_gives_float32_images_near_the_float32_ones(
    name: str, trained: TrainedModels
) -> None:
    images = {
        precision: generate(load_generator(trained.checkpoints[name], precision=precision), 4, 1)
        for precision in ("fp32", "bf16")
    }
    assert images["bf16"].dtype == torch.float32
    assert not torch.equal(images["bf16"], images["fp32"])  # the network ran in bf16
    assert (images["bf16"] - images["fp32"]).abs().mean() < 0.05
    with pytest.raises(UserError, match=r"precision 'fp16' is not one of auto, bf16, fp32"):
        load_generator(trained.checkpoints[name], precision="fp16")


@pytest.mark.parametrize("name", FAMILIES)
def test_photos_become_conditions_shaped_like_the_condition_rows(
    name: str, trained: TrainedModels
) -> None:
    generator = load_generator(trained.checkpoints[name])
    faces = np.load(trained.data / "packed" / str(RESOLUTION) / "test.npy")
    photos = to_float_nchw(faces, None)
    if not generator.takes_photos:  # the web service refuses reference photos with this
        with pytest.raises(ValueError, match=r"takes no reference photos|cannot compute it"):
            generator.conditions_from_photos(photos)
        return
    conditions = generator.conditions_from_photos(photos)
    condition = str(generator.condition)
    rows = np.load(features_dir(trained.data, RESOLUTION) / condition / "test.npy")
    assert conditions.shape == rows.shape  # one row per photo, as the condition array holds
    assert torch.equal(conditions, generator.conditions_from_photos(photos))
    images = generator.sample(len(faces), cond=conditions, generator=torch.Generator())
    assert images.shape == (len(faces), 3, RESOLUTION, RESOLUTION)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_conditional_model_keeps_random_conditions_fitted_on_its_training_rows(
    name: str, trained: TrainedModels
) -> None:
    generator = load_generator(trained.checkpoints[name])
    if generator.condition is None or not issubclass(generator.family, ConditionalFamily):
        with pytest.raises(ValueError, match="keeps no random conditions"):
            generator.random_conditions(2)
        return
    folder = features_dir(trained.data, RESOLUTION) / generator.condition
    rows = np.load(folder / "train.npy").astype(np.float64)
    drawn = generator.random_conditions(20_000, torch.Generator().manual_seed(0)).double()
    assert drawn.shape == (20_000, rows.shape[1])
    spread = rows.std(axis=0, ddof=1)
    np.testing.assert_allclose(drawn.mean(0), rows.mean(axis=0), atol=float(spread.max()) * 0.05)
    np.testing.assert_allclose(drawn.std(0), spread, rtol=0.05)
    images = generator.sample(4, cond=drawn[:4].float(), generator=torch.Generator())
    assert images.shape == (4, 3, RESOLUTION, RESOLUTION)


@pytest.mark.parametrize("name", FAMILIES)
def test_without_a_reference_a_conditional_model_samples_random_conditions(
    name: str, trained: TrainedModels
) -> None:
    """generate() (inference, the web service, the MLflow model) draws a conditional model's
    conditions from its prior with the seeded noise, not from the null embedding."""
    generator = load_generator(trained.checkpoints[name])
    if SAMPLE not in generator.family.capabilities:
        return
    images = generate(generator, 3, seed=5)
    assert torch.equal(images, generate(generator, 3, seed=5))  # the same seed, the same faces
    if generator.condition is None or not issubclass(generator.family, ConditionalFamily):
        return
    noise = torch.Generator().manual_seed(5)
    drawn = generator.random_conditions(3, noise)
    assert torch.equal(images, generator.sample(3, cond=drawn, generator=noise).cpu())
    null = generator.sample(3, generator=torch.Generator().manual_seed(5)).cpu()
    assert not torch.equal(images, null)


@pytest.mark.parametrize("name", SAMPLING)
def test_training_logs_a_preview_grid(name: str, trained: TrainedModels) -> None:
    grid = np.asarray(Image.open(trained.root / "models" / name / "samples.png"))
    columns = 4  # train=smoke's 16 images: a 4×4 grid with 2-pixel gutters
    assert grid.shape == (columns * (RESOLUTION + 2) + 2, columns * (RESOLUTION + 2) + 2, 3)


@pytest.mark.slow  # every loader of every family: tests/test_checkpoint_safety.py is the quick one
@pytest.mark.parametrize("name", FAMILIES)
def test_a_checkpoint_that_would_run_code_is_refused_everywhere(
    name: str, trained: TrainedModels, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    state = load_checkpoint(trained.checkpoints[name])
    state["payload"] = RunsCode(marker)
    models = tmp_path / "models"
    malicious = models / name / "checkpoints" / "step-00000003.pt"
    malicious.parent.mkdir(parents=True)
    with malicious.open("wb") as file:
        torch.save(state, file)

    refused = "is not a checkpoint of this project.*could run code"
    with pytest.raises(CheckpointError, match=refused):
        load_generator(malicious)
    with pytest.raises(CheckpointError, match=refused):
        train(config(name, trained.data, models, "train.resume=auto"), NullTracker())
    with pytest.raises(CheckpointError, match=refused):
        evaluate(config(name, trained.data, models, "eval.device=cpu"), malicious)
    with pytest.raises(SystemExit, match=refused) as failure:
        inference_main([str(malicious), "--n", "1", "--out", str(tmp_path / "out")])
    assert "weights_only" not in str(failure.value)  # never advise the unsafe loader
    assert not marker.exists(), "loading a checkpoint ran code"
    pickle.loads(pickle.dumps(RunsCode(marker)))  # the payload is real: unpickling runs it
    assert marker.exists()
