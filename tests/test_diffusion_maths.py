"""The diffusion family's maths (families/diffusion.py) against independent computations: the
schedules in numpy from their papers' formulas, the loss and the DDIM step written out by
hand, and the samplers on data whose exact denoiser and probability-flow ODE are known in
closed form (a single point; Gaussian pixels). A UNet of a few hundred weights stands for
the network where one is needed. No fixture of conftest.py: `scripts/mutate.py` runs this
file with `--noconftest` in a few seconds per mutant."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from face_generation.families.diffusion import (
    DiffusionFamily,
    DiffusionModel,
    NoiseSchedule,
    check_sampling,
    ddim_sample,
    ddim_update,
    denoised,
    diffusion_loss,
    guided_denoiser,
    heun_sample,
    prediction_target,
)
from face_generation.families.latents import gaussian_latents
from face_generation.runtime.family import Batch
from face_generation.training.device import step_context

LINEAR = {"kind": "linear", "timesteps": 40, "beta_start": 0.001, "beta_end": 0.3}
COSINE = {"kind": "cosine", "timesteps": 30, "cosine_offset": 0.008, "max_beta": 0.5}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def schedule(settings: dict[str, Any] = LINEAR, **changes: Any) -> NoiseSchedule:
    return NoiseSchedule.from_config(OmegaConf.create({**settings, **changes}))


# --- the schedule ------------------------------------------------------------------------


def test_the_linear_schedule_is_the_product_of_evenly_spaced_betas() -> None:
    betas = np.linspace(0.001, 0.3, 40)
    expected = np.cumprod(1 - betas)
    ours = schedule()
    assert ours.alpha_bar.dtype == torch.float64 and ours.timesteps == 40
    np.testing.assert_allclose(ours.alpha_bar.numpy(), expected, rtol=1e-12)


def test_the_cosine_schedule_follows_a_squared_cosine_with_capped_betas() -> None:
    steps, offset = 30, 0.008
    f = np.cos((np.arange(steps + 1) / steps + offset) / (1 + offset) * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.5)
    assert (betas == 0.5).sum() >= 1 and (betas < 0.5).sum() > 20  # the cap bites at the end
    ours = schedule(COSINE)
    np.testing.assert_allclose(ours.alpha_bar.numpy(), np.cumprod(1 - betas), rtol=1e-12)
    # uncapped, ᾱ_t is f(t) / f(0) itself (Nichol & Dhariwal's definition)
    uncapped = schedule(COSINE, max_beta=1.0).alpha_bar.numpy()
    np.testing.assert_allclose(uncapped[:-1], (f[1:] / f[0])[:-1], rtol=1e-9)


def test_the_schedule_kind_is_compared_by_value() -> None:
    # Names read from a YAML file are new strings, not the interned literals of the code.
    for kind, settings in (("lin", LINEAR), ("cos", COSINE)):
        built = schedule(settings, kind="".join([kind, settings["kind"][3:]]))
        assert torch.equal(built.alpha_bar, schedule(settings).alpha_bar)


def test_the_cosine_schedule_of_an_odd_number_of_steps() -> None:
    f = np.cos((np.arange(32) / 31 + 0.008) / 1.008 * np.pi / 2) ** 2
    expected = np.cumprod(1 - np.minimum(1 - f[1:] / f[:-1], 0.5))
    ours = schedule(COSINE, timesteps=31).alpha_bar.numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["sigmoid", "arccos"])  # names after and before "cosine"
def test_an_unknown_schedule_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match=rf"model.schedule.kind='{kind}': expected one of"):
        schedule(kind=kind)


def test_alpha_and_sigma_of_each_row_s_timestep() -> None:
    ours = schedule()
    like = torch.zeros(3, 2, 4, 4)
    alpha, sigma = ours.alpha_sigma(torch.tensor([0, 17, 39]), like)
    expected = ours.alpha_bar[[0, 17, 39]].numpy()
    assert alpha.shape == sigma.shape == (3, 1, 1, 1) and alpha.dtype == torch.float32
    np.testing.assert_allclose(alpha.flatten().numpy(), np.sqrt(expected), rtol=1e-5)
    np.testing.assert_allclose(sigma.flatten().numpy(), np.sqrt(1 - expected), rtol=1e-5)


def test_noised_images_are_alpha_x0_plus_sigma_noise() -> None:
    ours = schedule()
    x0, noise = torch.full((2, 1, 1, 2), 0.5), torch.tensor([1.0, -2.0]).view(2, 1, 1, 1)
    noised = ours.noised(x0, torch.tensor([5, 30]), noise.expand(2, 1, 1, 2))
    for row, t in enumerate((5, 30)):
        alpha_bar = float(ours.alpha_bar[t])
        value = math.sqrt(alpha_bar) * 0.5 + math.sqrt(1 - alpha_bar) * float(noise[row])
        assert noised[row].flatten().tolist() == pytest.approx([value, value], rel=1e-6)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (1, [39]),
        (2, [39, 0]),
        (3, [39, 20, 0]),
        (4, [39, 26, 13, 0]),
        (40, list(range(39, -1, -1))),
    ],
)
def test_sampling_timesteps_run_evenly_from_the_noisiest_to_zero(
    steps: int, expected: list[int]
) -> None:
    assert schedule().sampling_timesteps(steps) == expected


# --- targets and the loss ----------------------------------------------------------------


def test_eps_and_v_describe_the_same_image_and_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    x0, noise = (
        torch.randn(4, 3, 2, 2, generator=generator),
        torch.randn(4, 3, 2, 2, generator=generator),
    )
    alpha_bar = torch.tensor([0.9, 0.5, 0.1, 0.01]).view(4, 1, 1, 1)
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x_t = alpha * x0 + sigma * noise
    assert torch.equal(prediction_target("eps", x0, noise, alpha, sigma), noise)
    v = prediction_target("v", x0, noise, alpha, sigma)
    torch.testing.assert_close(v, alpha * noise - sigma * x0)
    for prediction, output in (("eps", noise), ("v", v)):
        x0_hat, eps_hat = denoised(prediction, x_t, output, alpha, sigma)
        torch.testing.assert_close(x0_hat, x0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eps_hat, noise, rtol=1e-5, atol=1e-5)


def test_denoised_by_hand() -> None:
    x_t, output = torch.tensor([3.0]), torch.tensor([1.0])
    # ε: x̂0 = (x_t - σ·out) / α, ε̂ = out; v: x̂0 = α·x_t - σ·out, ε̂ = σ·x_t + α·out
    assert denoised("eps", x_t, output, 0.5, 2.0) == (torch.tensor([2.0]), output)
    x0, eps = denoised("v", x_t, output, 0.5, 2.0)
    assert (float(x0), float(eps)) == (-0.5, 6.5)
    # a target named by a config file: a new string, compared by value
    assert denoised("".join(["e", "ps"]), x_t, output, 0.5, 2.0) == (torch.tensor([2.0]), output)


class Fixed(nn.Module):
    """A network whose output is `scale`·x_t, recording what it was called with."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.calls: list[tuple[Any, ...]] = []

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, null: Any = None
    ) -> torch.Tensor:
        self.calls.append((x, t, cond, null))
        return self.scale * x


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_the_loss_is_the_weighted_squared_error_written_out(
    prediction: str, weighting: str
) -> None:
    ours = schedule()
    x0 = torch.linspace(-1, 1, 6 * 3 * 2 * 2).view(6, 3, 2, 2)
    network, cond, null = Fixed(0.3), torch.ones(6, 2), torch.zeros(6, dtype=torch.bool)
    torch.manual_seed(7)
    named = ["".join(name) for name in (prediction, weighting)]  # as read from a config file
    loss = diffusion_loss(network, ours, x0, *named, 2.0, cond, null)
    torch.manual_seed(7)  # the same draws: timesteps first, then the noise
    t, noise = torch.randint(40, (6,)), torch.randn_like(x0)
    alpha_bar = ours.alpha_bar[t].view(6, 1, 1, 1)
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x_t = alpha * x0 + sigma * noise
    target = noise if prediction == "eps" else alpha * noise - sigma * x0
    snr = alpha_bar / (1 - alpha_bar)
    weight = torch.ones_like(snr)
    if weighting == "min_snr":
        weight = torch.minimum(snr, torch.tensor(2.0)) / (snr if prediction == "eps" else snr + 1)
        assert (snr > 2).any() and (snr < 2).any()  # the cap bites for some rows only
    expected = (weight * (0.3 * x_t - target) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    ((called_x, called_t, called_cond, called_null),) = network.calls
    torch.testing.assert_close(called_x, x_t.float())
    assert torch.equal(called_t, t) and called_cond is cond and called_null is null


# --- the DDIM step -------------------------------------------------------------------------


def test_the_ddim_step_by_hand() -> None:
    x0, eps, noise = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([10.0])
    # η = 0: √ᾱ' x̂0 + √(1 − ᾱ') ε̂, with or without noise given
    deterministic = 0.8 * 1.0 + 0.6 * 2.0
    assert float(ddim_update(x0, eps, 0.25, 0.64)) == pytest.approx(deterministic)
    assert float(ddim_update(x0, eps, 0.25, 0.64, 0.0, noise)) == pytest.approx(deterministic)
    # η = 1 from ᾱ 0.25 to 0.64: σ² = (0.36 / 0.75)·(1 - 0.25 / 0.64) = 0.2925
    variance = 0.36 / 0.75 * (1 - 0.25 / 0.64)
    stochastic = 0.8 + math.sqrt(0.36 - variance) * 2.0 + math.sqrt(variance) * 10.0
    assert float(ddim_update(x0, eps, 0.25, 0.64, 1.0, noise)) == pytest.approx(stochastic)
    half = 0.8 + math.sqrt(0.36 - variance / 4) * 2.0 + math.sqrt(variance) / 2 * 10.0
    assert float(ddim_update(x0, eps, 0.25, 0.64, 0.5, noise)) == pytest.approx(half)
    # η > 0 without fresh noise: the deterministic part only, its ε̂ share shrunk by σ
    assert float(ddim_update(x0, eps, 0.25, 0.64, 1.0)) == pytest.approx(
        0.8 + math.sqrt(0.36 - variance) * 2.0
    )


# --- the samplers on data whose exact denoiser is known ----------------------------------

POINT = 0.3  # every pixel of every training image


def point_denoiser(ours: NoiseSchedule, calls: list[tuple[torch.Tensor, int]]) -> Any:
    """The exact denoiser of data that is always POINT: x̂0 = POINT, ε̂ = (x_t − α·POINT)/σ."""

    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append((x.clone(), t))
        alpha_bar = float(ours.alpha_bar[t])
        eps = (x - math.sqrt(alpha_bar) * POINT) / math.sqrt(1 - alpha_bar)
        return torch.full_like(x, POINT), eps

    return denoise


@pytest.mark.parametrize("steps", [1, 3, 40])
def test_ddim_lands_on_the_data_and_keeps_the_noise_it_started_from(steps: int) -> None:
    ours, calls = schedule(), []
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    result = ddim_sample(point_denoiser(ours, calls), ours, noise, steps, 0.0, None)
    torch.testing.assert_close(result, torch.full_like(noise, POINT))
    timesteps = ours.sampling_timesteps(steps)
    assert [t for _, t in calls] == timesteps
    # deterministic DDIM keeps ε: the network sees α_t·POINT + σ_t·ε at each of its steps
    first = float(ours.alpha_bar[timesteps[0]])
    eps = (noise - math.sqrt(first) * POINT) / math.sqrt(1 - first)
    for x, t in calls:
        alpha_bar = float(ours.alpha_bar[t])
        expected = math.sqrt(alpha_bar) * POINT + math.sqrt(1 - alpha_bar) * eps
        torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5)


def test_ancestral_ddim_replaces_the_share_of_eps_eta_says_with_fresh_noise() -> None:
    ours = schedule()
    noise = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for eta in (1.0, 0.5):
        calls: list[tuple[torch.Tensor, int]] = []
        generator = torch.Generator().manual_seed(3)
        result = ddim_sample(point_denoiser(ours, calls), ours, noise, 3, eta, generator)
        torch.testing.assert_close(result, torch.full_like(noise, POINT))  # the last step: x̂0
        (x_a, t_a), (x_b, t_b) = calls[0], calls[1]
        a, b = float(ours.alpha_bar[t_a]), float(ours.alpha_bar[t_b])
        eps_a = (x_a - math.sqrt(a) * POINT) / math.sqrt(1 - a)
        eps_b = (x_b - math.sqrt(b) * POINT) / math.sqrt(1 - b)
        # ε_b = (√(1 − ᾱ_b − σ²)·ε_a + σ·z) / √(1 − ᾱ_b), z fresh: their correlation says σ
        variance = eta**2 * (1 - b) / (1 - a) * (1 - a / b)
        kept = math.sqrt(1 - b - variance) / math.sqrt(1 - b)
        correlation = float(torch.corrcoef(torch.stack([eps_a.flatten(), eps_b.flatten()]))[0, 1])
        assert correlation == pytest.approx(kept, abs=0.03), eta
        assert float(eps_b.std()) == pytest.approx(1.0, abs=0.03)
        # the fresh noise is the generator's
        again: list[tuple[torch.Tensor, int]] = []
        generator = torch.Generator().manual_seed(3)
        ddim_sample(point_denoiser(ours, again), ours, noise, 3, eta, generator)
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(calls, again, strict=True))


def test_fresh_noise_is_drawn_at_every_step_but_the_last() -> None:
    ours, calls = schedule(), []
    generator = torch.Generator().manual_seed(4)
    ddim_sample(point_denoiser(ours, calls), ours, torch.zeros(2, 3, 2, 2), 3, 1.0, generator)
    expected = torch.Generator().manual_seed(4)
    for _ in range(2):
        gaussian_latents(2, 12, torch.device("cpu"), expected)
    assert torch.equal(generator.get_state(), expected.get_state())
    # Deterministic DDIM draws nothing: the next batch's noise comes from the same stream.
    untouched = seeded(4)
    ddim_sample(point_denoiser(ours, []), ours, torch.zeros(2, 3, 2, 2), 3, 0.0, untouched)
    assert torch.equal(untouched.get_state(), seeded(4).get_state())


VARIANCE = 0.25  # Gaussian pixels: x0 ~ N(0, VARIANCE)


def gaussian_denoiser(ours: NoiseSchedule, calls: list[int]) -> Any:
    """The exact denoiser of N(0, VARIANCE) pixels: E[x0 | x_t] = α·v·x_t / (α²·v + σ²)."""

    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(t)
        alpha_bar = float(ours.alpha_bar[t])
        x0 = math.sqrt(alpha_bar) * VARIANCE * x / (alpha_bar * VARIANCE + 1 - alpha_bar)
        return x0, (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)

    return denoise


def exact_flow(ours: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """Where the probability-flow ODE takes x_{T−1} = `noise`, then the exact denoiser at
    t = 0: in x̃ = x/α, s = σ/α the marginals are N(0, v + s²) and the flow scales x̃ by
    √(v + s_0²) / √(v + s_T²); at t = 0, E[x0 | x̃] = x̃·v / (v + s_0²)."""
    levels = ((1 - ours.alpha_bar) / ours.alpha_bar).sqrt()
    first, last = float(levels[-1]), float(levels[0])
    flowed = (
        noise
        / float(ours.alpha_bar[-1].sqrt())
        * math.sqrt((VARIANCE + last**2) / (VARIANCE + first**2))
    )
    return flowed * VARIANCE / (VARIANCE + last**2)


def test_heun_follows_the_exact_flow_to_second_order_and_ddim_to_first() -> None:
    ours = schedule(LINEAR, timesteps=100, beta_end=0.05)
    noise = torch.randn(1, 3, 8, 8, generator=seeded(5), dtype=torch.float64)
    exact = exact_flow(ours, noise)

    def errors(steps: int) -> tuple[float, float]:
        heun = heun_sample(gaussian_denoiser(ours, []), ours, noise, steps)
        euler = ddim_sample(gaussian_denoiser(ours, []), ours, noise, steps, 0.0, None)
        return float((heun - exact).abs().max()), float((euler - exact).abs().max())

    (heun_25, euler_25), (heun_50, euler_50) = errors(25), errors(50)
    assert heun_50 < heun_25 / 3 and heun_50 < 2e-3  # twice the steps: a quarter of the error
    assert euler_25 / 2.5 < euler_50 < euler_25 / 1.5  # DDIM is the flow's Euler method: half
    assert heun_25 < euler_25 / 10
    heun_calls: list[int] = []
    heun_sample(gaussian_denoiser(ours, heun_calls), ours, noise, 8)
    timesteps = ours.sampling_timesteps(8)
    # each step evaluates at its start and its end; the last one (to x̂0) at its start only
    assert heun_calls == [timesteps[0], *[t for t in timesteps[1:] for _ in (1, 2)]]
    assert len(heun_calls) == 2 * 8 - 1


def test_heun_lands_on_the_data_from_the_noise_it_is_given() -> None:
    ours, calls = schedule(COSINE), []
    noise = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(6))
    result = heun_sample(point_denoiser(ours, calls), ours, noise, 5)
    torch.testing.assert_close(result, torch.full_like(noise, POINT))
    first = float(ours.alpha_bar[29])
    eps = (noise - math.sqrt(first) * POINT) / math.sqrt(1 - first)
    for x, t in calls:  # on the exact flow the network sees α_t·POINT + σ_t·ε throughout
        alpha_bar = float(ours.alpha_bar[t])
        expected = math.sqrt(alpha_bar) * POINT + math.sqrt(1 - alpha_bar) * eps
        torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)
    assert heun_sample(point_denoiser(ours, []), ours, noise, 1).equal(
        torch.full_like(noise, POINT)
    )


# --- guidance and the family --------------------------------------------------------------


def tiny_unet(
    prediction: str = "eps", cond_dim: int | None = 3, timesteps: int = 40
) -> DiffusionModel:
    """A UNet of a few hundred weights, every weight random (zero-initialised layers too)."""
    torch.manual_seed(0)
    network = DiffusionModel(
        schedule(LINEAR, timesteps=timesteps), prediction, resolution=4, channels=4, channel_mults=[1],
        num_res_blocks=1, attention_resolutions=[], head_channels=4, groups=2, dropout=0.0,
        cond_dim=cond_dim,
    )  # fmt: skip
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0, 0.5)
    return network.eval()


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("guidance", [0.0, 0.5, 1.0, 2.5])
def test_guidance_mixes_the_conditional_and_the_unconditional_output(
    prediction: str, guidance: float
) -> None:
    network = tiny_unet(prediction)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    cond = torch.randn(2, 3, generator=torch.Generator().manual_seed(8))
    steps = torch.full((2,), 12)
    with torch.no_grad():
        conditional, unconditional = network(x, steps, cond), network(x, steps)
        output = unconditional + guidance * (conditional - unconditional)
        batches: list[int] = []
        hook = network.register_forward_hook(lambda _, inputs, __: batches.append(len(inputs[0])))
        x0, eps = guided_denoiser(network, cond, guidance, clip=False)(x, 12)
        hook.remove()
    # w = 0 and w = 1 need one half only; any other scale both, in one batch of twice the rows
    assert batches == ([2] if guidance in (0.0, 1.0) else [4])
    alpha_bar = float(network.schedule.alpha_bar[12])
    expected_x0, expected_eps = denoised(
        prediction, x, output, math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    )
    torch.testing.assert_close(x0, expected_x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps, expected_eps, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)


def test_clipping_keeps_x0_in_the_image_range_and_rederives_eps() -> None:
    network = tiny_unet()
    x = 3 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        raw, _ = guided_denoiser(network, None, 1.0, clip=False)(x, 30)
        x0, eps = guided_denoiser(network, None, 1.0)(x, 30)
    assert raw.abs().max() > 1 and (raw.abs() < 1).any()
    torch.testing.assert_close(x0, raw.clamp(-1, 1))
    alpha_bar = float(network.schedule.alpha_bar[30])
    torch.testing.assert_close(
        x, math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps, rtol=1e-4, atol=1e-4
    )
    # without a condition, any guidance: the null embedding's output
    with torch.no_grad():
        null = guided_denoiser(network, None, 3.0, clip=False)(x, 30)[0]
    torch.testing.assert_close(null, raw)


@pytest.mark.parametrize(
    ("steps", "sampler", "guidance", "eta", "message"),
    [
        (5, "euler", 1.0, 0.0, r"sampler='euler': expected one of ddim, ddpm, heun"),
        (0, "ddim", 1.0, 0.0, r"steps=0: expected 1 to 40 \(the schedule's timesteps\)"),
        (41, "ddim", 1.0, 0.0, r"steps=41: expected 1 to 40"),
        (5, "ddim", -0.5, 0.0, r"guidance=-0.5: expected 0 or more"),
        (5, "ddim", 1.0, -0.1, r"eta=-0.1: expected 0 \(deterministic DDIM\) or more"),
    ],
)
def test_sampling_options_out_of_range_are_refused(
    steps: int, sampler: str, guidance: float, eta: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_sampling(schedule(), steps, sampler, guidance, eta)


def test_sampling_options_at_their_limits_are_accepted() -> None:
    for steps, sampler, guidance, eta in [
        (1, "ddim", 0.0, 0.0),
        (40, "heun", 0.0, 0.0),
        (40, "ddpm", 7.0, 2.0),
    ]:
        check_sampling(schedule(), steps, sampler, guidance, eta)


@pytest.mark.parametrize(
    ("sampler", "eta"), [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 1.0), ("heun", 0.0)]
)
def test_the_family_samples_with_the_sampler_it_is_asked_for(sampler: str, eta: float) -> None:
    network, cond = tiny_unet(), torch.randn(3, 3, generator=seeded(10))
    named = "".join(sampler)  # a new string, as read from a config file
    images = DiffusionFamily.sample(
        network, 3, cond=cond, generator=seeded(11), steps=4, sampler=named, guidance=2.0,
        eta=eta if sampler == "ddim" else 0.0,
    )  # fmt: skip
    generator = seeded(11)
    x = gaussian_latents(3, 48, torch.device("cpu"), generator).view(3, 3, 4, 4)
    denoise = guided_denoiser(network, cond, 2.0)
    with torch.no_grad():
        if sampler == "heun":
            expected = heun_sample(denoise, network.schedule, x, 4)
        else:
            expected = ddim_sample(denoise, network.schedule, x, 4, eta, generator)
    torch.testing.assert_close(images, expected.clamp(-1, 1))
    assert images.shape == (3, 3, 4, 4) and images.abs().max() <= 1
    assert DiffusionFamily.network_evaluations(steps=4, sampler=named) == (
        7 if sampler == "heun" else 4
    )


def test_the_family_samples_differ_by_seed_sampler_and_condition() -> None:
    network, cond = tiny_unet(), torch.randn(2, 3, generator=seeded(12))

    def draw(seed: int = 0, **options: Any) -> torch.Tensor:
        options.setdefault("steps", 3)
        return DiffusionFamily.sample(network, 2, generator=seeded(seed), **options)

    assert torch.equal(draw(), draw())
    assert torch.equal(draw(), draw(sampler="ddim", eta=0.0, guidance=1.0))  # the defaults
    # with a condition, the default guidance is the conditional model as trained (w = 1)
    assert torch.equal(draw(cond=cond), draw(cond=cond, guidance=1.0))
    assert not torch.equal(draw(cond=cond), draw(cond=cond, guidance=2.0))
    assert not torch.equal(draw(), draw(eta=1.0))
    assert not torch.equal(draw(), draw(1))
    assert not torch.equal(draw(), draw(sampler="heun"))
    assert not torch.equal(draw(), draw(cond=cond))
    assert torch.equal(draw(guidance=5.0), draw(guidance=0.0))  # no condition: the null one
    assert torch.equal(draw(sampler="ddpm"), draw(sampler="ddim", eta=1.0))
    with pytest.raises(ValueError, match="steps=0"):
        draw(steps=0)
    with pytest.raises(ValueError, match=r"the condition must be 2×3"):
        draw(cond=torch.zeros(2, 4))
    with pytest.raises(TypeError):  # the options are keywords: a condition is never taken for one
        DiffusionFamily.sample(network, 2, cond)  # type: ignore[misc]


def family_config(**changes: Any) -> DictConfig:
    model = {
        "name": "diffusion", "channels": 4, "channel_mults": [1, 2], "num_res_blocks": [1, 2],
        "attention_resolutions": [2], "head_channels": 4, "groups": 2, "dropout": 0.0,
        "schedule": LINEAR, "prediction": "v", "loss_weighting": "min_snr",
        "min_snr_gamma": 3.0, "condition": None, "cond_dim": 5, "cond_drop": 0.0,
        "optimizer": {"lr": 0.01, "betas": [0.9, 0.999]},
    }  # fmt: skip
    return OmegaConf.create({**model, **changes})


def test_the_family_builds_the_network_its_config_describes() -> None:
    network = DiffusionFamily.build_generator(family_config(), 4)
    assert network.prediction == "v" and network.resolution == 4 and network.cond_dim is None
    assert torch.equal(network.schedule.alpha_bar, schedule().alpha_bar)
    blocks = DiffusionFamily.build_generator(family_config(num_res_blocks=1), 4)
    assert sum(p.numel() for p in blocks.parameters()) < sum(
        p.numel() for p in network.parameters()
    )
    conditioned = family_config(condition={"network": "x", "array": "y"})
    assert DiffusionFamily.build_generator(conditioned, 4).cond_dim == 5
    with pytest.raises(ValueError, match=r"model.prediction='x0': expected one of \('eps', 'v'\)"):
        DiffusionFamily.build_generator(family_config(prediction="x0"), 4)


@pytest.mark.slow  # eleven optimiser steps of a UNet: two seconds
def test_a_training_step_lowers_the_family_s_own_loss() -> None:
    context = step_context(
        torch.device("cpu"), OmegaConf.create({"precision": "fp32", "grad_clip": None})
    )
    with pytest.raises(ValueError, match=r"model.loss_weighting='snr': expected one of"):
        DiffusionFamily(family_config(loss_weighting="snr"), 4, context)
    torch.manual_seed(0)
    family = DiffusionFamily(family_config(), 4, context)
    images = torch.rand(4, 3, 4, 4) * 2 - 1
    batch = Batch(images=images, rows=torch.arange(4))
    torch.manual_seed(1)
    with torch.no_grad():
        before = float(
            diffusion_loss(family.model, family.model.schedule, images, "v", "min_snr", 3.0)
        )
    torch.manual_seed(1)
    result = family.train_step(batch, 0)
    assert float(result["loss"]) == pytest.approx(before, rel=1e-5)
    assert float(result["grad_norm"]) > 0 and not result["loss"].requires_grad
    for _ in range(10):
        family.train_step(batch, 1)
    torch.manual_seed(1)
    with torch.no_grad():
        after = float(
            diffusion_loss(family.model, family.model.schedule, images, "v", "min_snr", 3.0)
        )
    assert after < before


def test_the_family_samples_50_steps_by_default() -> None:
    network = tiny_unet(timesteps=60)
    default = DiffusionFamily.sample(network, 1, generator=seeded(13))
    assert torch.equal(default, DiffusionFamily.sample(network, 1, generator=seeded(13), steps=50))
    assert not torch.equal(
        default, DiffusionFamily.sample(network, 1, generator=seeded(13), steps=49)
    )
