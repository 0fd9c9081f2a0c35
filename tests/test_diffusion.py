"""The diffusion family: schedule maths, the samplers, classifier-free guidance, bad options,
learning, and the trained model through evaluation, inference and the MLflow model.

`diffusion` is the unconditional family of configs/model/diffusion.yaml; `diffusion_embedding`
(tests/diffusion_family.py) is the same family conditioned on synthetic embedding rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from face_generation.config import compose
from face_generation.evaluation.evaluate_model import evaluate
from face_generation.evaluation.record import read_record
from face_generation.evaluation.report import report_markdown
from face_generation.families.diffusion import (
    DiffusionFamily,
    DiffusionModel,
    NoiseSchedule,
    ddim_sample,
    ddim_update,
    denoised,
    guided_denoiser,
    prediction_target,
)
from face_generation.inference import generate
from face_generation.inference import main as inference_main
from face_generation.models.diffusion import Block, ResBlock, SelfAttention
from face_generation.runtime.family import Batch
from face_generation.runtime.generator import TrainedGenerator, load_generator
from face_generation.runtime.images import to_uint8
from face_generation.runtime.mlflow_model import GeneratorModel, model_signature
from face_generation.training.device import step_context
from tests.conftest import TrainedModels
from tests.diffusion_family import EmbeddingDiffusion
from tests.faces import RESOLUTION, real_faces
from tests.tiny_family import EMBEDDING_DIM


def model_config(name: str = "diffusion", *overrides: str) -> DictConfig:
    """The model's config; `diffusion` unconditional (its default conditions on the backbone)."""
    unconditional = ["model.condition=null"] if name == "diffusion" else []
    return compose("config", [f"model={name}", *unconditional, *overrides]).model


def schedule(kind: str) -> NoiseSchedule:
    return NoiseSchedule.from_config(
        model_config("diffusion", f"model.schedule.kind={kind}").schedule
    )


def random_conditional_network(resolution: int = 16) -> DiffusionModel:
    """A conditional network predicting ε whose output depends on its inputs from the start:
    the zero-initialised layers (a fresh UNet predicts 0 everywhere) get random weights."""
    torch.manual_seed(0)
    cfg = model_config("diffusion_embedding", "model.prediction=eps")
    network = EmbeddingDiffusion.build_generator(cfg, resolution).eval()
    with torch.no_grad():
        for parameter in network.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.2)
    return network


# --- the schedule ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_noised_images_have_the_moments_of_q_xt_given_x0(kind: str) -> None:
    noise_schedule = schedule(kind)
    alpha_bar = noise_schedule.alpha_bar
    assert noise_schedule.timesteps == 1000
    assert (
        torch.all(alpha_bar[1:] < alpha_bar[:-1]) and alpha_bar[0] > 0.99 and alpha_bar[-1] < 1e-3
    )
    draws = 20_000
    x0 = torch.tensor([-0.8, 0.0, 0.5]).view(1, 3, 1, 1).expand(draws, 3, 1, 1)
    generator = torch.Generator().manual_seed(0)
    for step in (0, 300, 999):
        t = torch.full((draws,), step)
        x_t = noise_schedule.noised(x0, t, torch.randn(x0.shape, generator=generator))
        mean, std = x_t.mean(dim=0).flatten(), x_t.std(dim=0).flatten()
        alpha_bar_t = float(alpha_bar[step])
        expected_mean = torch.tensor([-0.8, 0.0, 0.5]) * alpha_bar_t**0.5
        tolerance = 4 * (1 - alpha_bar_t) ** 0.5 / draws**0.5  # four standard errors
        assert torch.allclose(mean, expected_mean, atol=tolerance), (step, mean, expected_mean)
        assert torch.allclose(std, torch.full((3,), (1 - alpha_bar_t) ** 0.5), rtol=0.03)


def test_the_linear_schedule_is_ddpms() -> None:
    betas = 1 - schedule("linear").alpha_bar / torch.cat(
        [torch.ones(1, dtype=torch.float64), schedule("linear").alpha_bar[:-1]]
    )
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)


def test_eps_and_v_targets_describe_the_same_image_and_noise() -> None:
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=generator)
    noise_schedule = schedule("cosine")
    t = torch.tensor([0, 10, 500, 999])
    alpha, sigma = noise_schedule.alpha_sigma(t, x0)
    x_t = noise_schedule.noised(x0, t, noise)
    for prediction in ("eps", "v"):
        target = prediction_target(prediction, x0, noise, alpha, sigma)
        x0_hat, eps_hat = denoised(prediction, x_t, target, alpha, sigma)
        assert torch.allclose(eps_hat, noise, atol=1e-4), prediction
        # x̂_0 from ε divides by α_t (0.0003 at t = 999): compare where that is well posed
        assert torch.allclose(x0_hat[:3], x0[:3], atol=1e-3), prediction
    assert torch.allclose(
        denoised("v", x_t, prediction_target("v", x0, noise, alpha, sigma), alpha, sigma)[0],
        x0,
        atol=1e-5,
    )


def test_ddim_with_eta_zero_inverts_itself_at_1000_steps() -> None:
    """DDIM's update run upwards (inversion) then the sampler run down return the start, for
    the exact denoiser of Gaussian data N(μ, s²·I): a smooth ε̂ with a closed form."""
    noise_schedule = schedule("linear")
    mean, spread = 0.3, 0.5

    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = float(noise_schedule.alpha_bar[t])
        alpha, sigma = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
        eps = sigma * (x - alpha * mean) / (alpha_bar * spread**2 + sigma**2)  # E[ε | x_t]
        return (x - sigma * eps) / alpha, eps

    generator = torch.Generator().manual_seed(4)
    start = mean + spread * torch.randn(2, 3, 8, 8, generator=generator)  # x at t = 0
    x = start
    for t in range(noise_schedule.timesteps - 1):  # t → t + 1: DDIM inversion
        x0, eps = denoise(x, t)
        x = ddim_update(
            x0, eps, float(noise_schedule.alpha_bar[t]), float(noise_schedule.alpha_bar[t + 1])
        )
    assert (x - start).abs().mean() > 0.3  # x_T is noise, nothing like the start
    recovered = ddim_sample(denoise, noise_schedule, x, 1000, 0.0, None)
    expected = denoise(start, 0)[0]  # the sampler's last step: x̂_0 of x at t = 0
    # Euler steps both ways, each slope taken at its step's start: 1000 steps leave about
    # 0.01 at most (1.3 grey levels of 255 over the range [-1, 1]), 0.002 on average
    error = (recovered - expected).abs()
    assert error.max() < 0.02 and error.mean() < 0.005


# --- classifier-free guidance ---------------------------------------------------------


def test_guidance_mixes_the_conditional_and_the_unconditional_pass() -> None:
    network = random_conditional_network()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 16, 16, generator=generator)
    cond = torch.randn(3, EMBEDDING_DIM, generator=generator)
    t = torch.full((3,), 400)
    with torch.no_grad():
        unconditional = network(x, t)  # every row: the learned null embedding
        conditional = network(x, t, cond)
        assert torch.equal(network(x, t, cond, torch.ones(3, dtype=torch.bool)), unconditional)
        assert not torch.allclose(conditional, unconditional, atol=1e-3)

        def eps(guidance: float, condition: torch.Tensor | None = cond) -> torch.Tensor:
            return guided_denoiser(network, condition, guidance, clip=False)(x, 400)[1]

        assert torch.allclose(eps(0.0), unconditional, atol=1e-5)
        assert torch.allclose(eps(1.0), conditional, atol=1e-5)
        expected = unconditional + 3.0 * (conditional - unconditional)
        assert torch.allclose(eps(3.0), expected, atol=1e-4)
        assert torch.equal(eps(3.0, None), unconditional)  # no condition: the null embedding


def test_both_guidance_passes_are_one_batched_forward_pass() -> None:
    network = random_conditional_network()
    calls: list[int] = []
    network.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    cond = torch.randn(2, EMBEDDING_DIM)
    EmbeddingDiffusion.sample(network, 2, cond=cond, steps=4, guidance=3.0)
    assert calls == [4, 4, 4, 4]
    calls.clear()  # w = 0 (unconditional) and w = 1 (as trained) need one half only
    EmbeddingDiffusion.sample(network, 2, cond=cond, steps=2, guidance=0.0)
    EmbeddingDiffusion.sample(network, 2, cond=cond, steps=2, guidance=1.0)
    assert calls == [2, 2, 2, 2]


@pytest.mark.parametrize("cond_drop", [0.0, 0.1, 1.0])
def test_training_uses_the_null_embedding_with_probability_cond_drop(cond_drop: float) -> None:
    whole = compose(
        "config",
        [
            "model=diffusion_embedding",
            f"model.cond_drop={cond_drop}",
            "model.channels=4",
            "model.channel_mults=[1]",
            "model.attention_resolutions=[]",
            "model.head_channels=4",
        ],
    )
    family = EmbeddingDiffusion(whole.model, 4, step_context(torch.device("cpu"), whole.train))
    dropped: list[torch.Tensor] = []
    family.model.register_forward_pre_hook(lambda module, args: dropped.append(args[3]))
    rows = 512
    torch.manual_seed(3)
    batch = Batch(
        images=torch.rand(rows, 3, 4, 4) * 2 - 1,
        rows=torch.arange(rows),
        features={"tiny/embedding": torch.randn(rows, EMBEDDING_DIM)},
    )
    for step in range(10):
        family.train_step(batch, step)
    share = torch.cat(dropped).float().mean().item()
    standard_error = (cond_drop * (1 - cond_drop) / (10 * rows)) ** 0.5
    assert abs(share - cond_drop) <= 4 * standard_error


# --- the network ----------------------------------------------------------------------


def reference_res_block(block: ResBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """DDPM's residual block, written out: what the speed-ups of ResBlock.forward must keep."""
    h = F.conv2d(F.silu(F.group_norm(x, block.norm1.num_groups, block.norm1.weight,
                                     block.norm1.bias)),
                 block.conv1.weight, block.conv1.bias, padding=1)  # fmt: skip
    h = h + F.linear(emb, block.emb.weight, block.emb.bias)[:, :, None, None]
    h = F.silu(F.group_norm(h, block.norm2.num_groups, block.norm2.weight, block.norm2.bias))
    h = F.conv2d(h, block.conv2.weight, block.conv2.bias, padding=1)
    return (x if isinstance(block.skip, nn.Identity) else block.skip(x)) + h


def reference_attention(layer: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax(q·kᵀ/√d)·v over the H·W positions, as a residual, by hand."""
    n, c, h, w = x.shape
    tokens = F.group_norm(x, layer.norm.num_groups, layer.norm.weight, layer.norm.bias)
    q, k, v = F.linear(tokens.flatten(2).transpose(1, 2), layer.qkv.weight, layer.qkv.bias).chunk(
        3, -1
    )
    heads = lambda t: t.reshape(n, h * w, layer.heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = heads(q), heads(k), heads(v)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    attended = (weights @ v).transpose(1, 2).reshape(n, h * w, c)
    return x + F.linear(attended, layer.out.weight, layer.out.bias).transpose(1, 2).reshape(
        n, c, h, w
    )


@pytest.mark.parametrize("widths", [(16, 16), (16, 32)])
def test_the_blocks_compute_ddpms_formulas_forward_and_backward(widths: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = Block(*widths, emb_dim=24, groups=4, dropout=0.0, head_channels=8)
    with torch.no_grad():  # the zero-initialised layers too, so every term shows
        for parameter in block.parameters():
            parameter.normal_(0.0, 0.2)
    x, emb = torch.randn(2, widths[0], 8, 8, requires_grad=True), torch.randn(2, 24)
    assert block.attention is not None
    ours = block(x, emb)
    reference = reference_attention(block.attention, reference_res_block(block.res, x, emb))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    inputs = [x, *block.parameters()]
    for got, expected in zip(
        torch.autograd.grad(ours.square().sum(), inputs),
        torch.autograd.grad(reference.square().sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# --- learning -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_loss_falls_well_below_its_start_on_eight_faces() -> None:
    cfg = model_config(
        "diffusion", "model.channel_mults=[1,2]", "model.attention_resolutions=[8]",
        "model.optimizer.lr=0.002",
    )  # fmt: skip
    torch.manual_seed(0)
    family = DiffusionFamily(cfg, 16, step_context(torch.device("cpu"), compose().train))
    faces = torch.from_numpy(real_faces(8, 16)).permute(0, 3, 1, 2).float() / 127.5 - 1
    batch = Batch(images=faces, rows=torch.arange(8))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small: a thread pool only adds synchronisation
    try:
        losses = [family.train_step(batch, step)["loss"].item() for step in range(300)]
    finally:
        torch.set_num_threads(threads)
    first, last = np.mean(losses[:20]), np.mean(losses[-50:])
    assert last < 0.3 * first, (first, last)


# --- the trained model: sampling, bad options, evaluation, inference, MLflow ----------


@pytest.fixture(scope="module")
def unconditional(trained: TrainedModels) -> TrainedGenerator:
    return load_generator(trained.checkpoints["diffusion"])


@pytest.fixture(scope="module")
def conditional(trained: TrainedModels) -> TrainedGenerator:
    return load_generator(trained.checkpoints["diffusion_embedding"])


def draw(generator: TrainedGenerator, seed: int = 0, n: int = 3, **options: Any) -> torch.Tensor:
    return generator.sample(n, generator=torch.Generator().manual_seed(seed), **options)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "heun"])
def test_each_sampler_is_seeded_in_range_and_counts_its_network_passes(
    unconditional: TrainedGenerator, sampler: str
) -> None:
    calls: list[int] = []
    hook = unconditional.network.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        images = draw(unconditional, steps=6, sampler=sampler)
    finally:
        hook.remove()
    assert images.shape == (3, 3, RESOLUTION, RESOLUTION)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    assert len(calls) == unconditional.network_evaluations(steps=6, sampler=sampler)
    assert len(calls) == (11 if sampler == "heun" else 6)
    assert torch.equal(images, draw(unconditional, steps=6, sampler=sampler))
    assert not torch.equal(images, draw(unconditional, seed=1, steps=6, sampler=sampler))


def test_the_samplers_differ_and_eta_adds_noise(unconditional: TrainedGenerator) -> None:
    ddim, ddpm, heun = (draw(unconditional, steps=6, sampler=s) for s in ("ddim", "ddpm", "heun"))
    assert not torch.equal(ddim, ddpm) and not torch.equal(ddim, heun)
    assert torch.equal(draw(unconditional, steps=6, sampler="ddim", eta=1.0), ddpm)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"steps": 0}, r"steps=0: expected 1 to 1000"),
        ({"steps": 1001}, r"steps=1001: expected 1 to 1000"),
        ({"guidance": -1.0}, r"guidance=-1.0: expected 0 or more"),
        ({"sampler": "euler"}, r"sampler='euler': expected one of ddim, ddpm, heun"),
        ({"eta": -0.5}, r"eta=-0.5: expected 0"),
    ],
)
def test_bad_sampling_options_are_clear_errors(
    unconditional: TrainedGenerator, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        draw(unconditional, **options)


def test_conditions_must_fit_the_model(
    unconditional: TrainedGenerator, conditional: TrainedGenerator
) -> None:
    with pytest.raises(ValueError, match="unconditional: sample without a condition"):
        unconditional.sample(2, cond=torch.zeros(2, EMBEDDING_DIM))
    with pytest.raises(ValueError, match=rf"must be 2×{EMBEDDING_DIM}.*got \(3, {EMBEDDING_DIM}\)"):
        conditional.sample(2, cond=torch.zeros(3, EMBEDDING_DIM))


def test_a_conditional_model_without_a_condition_samples_its_null_embedding(
    conditional: TrainedGenerator,
) -> None:
    cond = torch.randn(3, EMBEDDING_DIM)
    without = draw(conditional, steps=5, guidance=3.0)
    assert torch.equal(without, draw(conditional, steps=5, guidance=0.0))
    unconditional_pass = conditional.sample(
        3, cond=cond, generator=torch.Generator().manual_seed(0), steps=5, guidance=0.0
    )
    assert torch.allclose(without, unconditional_pass, atol=1e-4)
    guided = conditional.sample(
        3, cond=cond, generator=torch.Generator().manual_seed(0), steps=5, guidance=3.0
    )
    assert not torch.allclose(without, guided, atol=1e-3)


def test_inference_takes_the_sampling_options(
    trained: TrainedModels, unconditional: TrainedGenerator, tmp_path: Path
) -> None:
    options = ["steps=5", "guidance=3", "sampler=heun"]
    arguments = [str(trained.checkpoints["diffusion"]), "--n", "2", "--seed", "4"]
    inference_main([*arguments, *(f"--option={o}" for o in options), "--out", str(tmp_path)])
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2
    with pytest.raises(
        SystemExit,
        match=r"\[inference\] error: option steps takes an integer from 1 to 1000, got 0",
    ):
        inference_main([*arguments, "--option", "steps=0", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match=r"option guidance takes a number from 0 to 50, got -2.0"):
        inference_main([*arguments, "--option", "guidance=-2", "--out", str(tmp_path / "bad")])


def test_the_mlflow_model_takes_the_same_options(unconditional: TrainedGenerator) -> None:
    signature = model_signature(DiffusionFamily, RESOLUTION).inputs.to_dict()
    columns = {column["name"]: column["type"] for column in signature}
    assert columns == {
        "n": "long",
        "seed": "long",
        "steps": "long",
        "sampler": "string",
        "guidance": "double",
        "eta": "double",
    }
    model = GeneratorModel()
    model.generator = unconditional
    request = pd.DataFrame(
        {"n": [2, 1], "seed": [5, 6], "steps": [4, 3], "sampler": ["heun", None]}
    )
    images = model.predict(None, request)
    assert images.shape == (3, RESOLUTION, RESOLUTION, 3)
    assert np.array_equal(
        images[:2], to_uint8(generate(unconditional, 2, 5, steps=4, sampler="heun"))
    )
    assert np.array_equal(images[2:], to_uint8(generate(unconditional, 1, 6, steps=3)))


@pytest.mark.slow
def test_evaluation_writes_the_sampling_and_its_network_passes_beside_the_scores(
    trained: TrainedModels, tmp_path: Path
) -> None:
    cfg = compose(
        "config",
        [
            "model=diffusion",
            "eval.device=cpu",
            "tracking.enabled=false",
            "+eval.sampling.sampler=heun",
            "+eval.sampling.steps=4",
            f"paths.data={trained.data}",
            f"paths.models={trained.root / 'models'}",
            f"paths.metrics={tmp_path / 'metrics'}",
            f"paths.plots={tmp_path / 'plots'}",
        ],
    )
    evaluate(cfg)
    record = read_record(tmp_path / "metrics", "diffusion")
    assert record is not None
    assert record["sampling"] == {"steps": 4, "sampler": "heun", "guidance": 1.0, "eta": 0.0}
    assert record["network_evaluations"] == 7
    assert record["metrics"]["fd_effnet"]["value"] is not None
    assert "steps=4, sampler=heun, guidance=1.0, eta=0.0 (7)" in report_markdown(
        {"diffusion": record}
    )
    # 8 test faces: scores the report labels smoke-scale, unless the bar is at their count
    smoke = report_markdown({"diffusion": record}, smoke_below=1000)
    assert "**Smoke-scale:** diffusion scored on fewer than 1000 generated samples" in smoke
    assert "Smoke-scale" not in report_markdown({"diffusion": record}, smoke_below=8)
