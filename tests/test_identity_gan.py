"""The identity-conditioned GAN (model=cond_gan) and the Imitator/Translator (model=translator):
their losses on small hand-checkable networks, the frozen networks they train through, their
place in the pipeline config, and evaluation judging them with dlib only. The family contract
(tests/test_family_contract.py) covers their training, checkpoints, resume and sampling on
the shared `trained` fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from face_generation.config import load_params
from face_generation.data.packed import features_dir
from face_generation.evaluation.evaluate_model import evaluate
from face_generation.evaluation.record import read_record
from face_generation.families.cond_gan import (
    IdentityEmbedding,
    PerceptualDistance,
    effnet_feature_distance,
    generator_loss,
    likeness_losses,
    r1_penalty,
)
from face_generation.families.latents import gaussian_latents
from face_generation.families.translator import TranslatorFamily, parameter_prior_loss
from face_generation.inference import main as inference_main
from face_generation.models.cond_gan import ProjectionDiscriminator, UNetGenerator
from face_generation.runtime.generator import load_generator
from face_generation.training.loop import train
from face_generation.training.tracker import NullTracker
from tests.conftest import REPO_ROOT, TrainedModels
from tests.faces import RESOLUTION, config

COND_DIM = 4


def generator(attention_side: int | None = 16) -> UNetGenerator:
    return UNetGenerator(
        resolution=RESOLUTION, code_dim=6, code_side=4, cond_dim=COND_DIM, style_dim=8,
        base_channels=4, max_channels=8, attention_side=attention_side, head_channels=4,
        groups=2, leaky_slope=0.2,
    )  # fmt: skip


def discriminator(spectral_norm: bool = False) -> ProjectionDiscriminator:
    return ProjectionDiscriminator(RESOLUTION, 4, 8, COND_DIM, 0.2, spectral_norm)


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_the_projection_term_changes_d_with_the_embedding_and_gradients_reach_both_networks(
    spectral_norm: bool,
) -> None:
    torch.manual_seed(0)
    d, g = discriminator(spectral_norm).eval(), generator()
    images = torch.rand(3, 3, RESOLUTION, RESOLUTION) * 2 - 1
    first, second = torch.randn(3, COND_DIM), torch.randn(3, COND_DIM)
    with torch.no_grad():
        phi = d.features(images)
        unconditional = d.psi(phi).squeeze(1)
        # D(x, e) = ψ(φ(x)) + ⟨W·e, φ(x)⟩, exactly
        for e in (first, second):
            projection = (d.embed(e) * phi).sum(dim=1)
            torch.testing.assert_close(d(images, e), unconditional + projection)
        assert not torch.allclose(d(images, first), d(images, second))

    d.train()
    fake = g(torch.randn(3, g.code_dim), first)
    generator_loss(d(fake, first)).backward()
    for name, network in (("generator", g), ("discriminator", d)):
        reached = [p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters()]
        assert sum(reached) > len(reached) // 2, f"gradients reach few {name} parameters"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.embed.parameters()), (
        "the projection W gets no gradient"
    )


class Quadratic(nn.Module):
    """D(x, e) = Σ a·x² + Σ e: ∇_x D = 2·a·x, so ‖∇_x D‖² = Σ 4·a²·x² per image."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor:
        return (self.a * x.square()).sum(dim=(1, 2, 3)) + (0 if e is None else e.sum(dim=1))


def test_r1_equals_a_hand_computed_penalty_on_a_tiny_network() -> None:
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2) / 10
    network = Quadratic()
    penalty = r1_penalty(network, x, torch.ones(2, COND_DIM))
    by_hand = (4 * 0.5**2 * x.square()).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(penalty, by_hand)
    penalty.backward()  # create_graph: the penalty trains D (d/da of 4a²Σx² is 8aΣx²)
    assert network.a.grad is not None
    torch.testing.assert_close(network.a.grad, (8 * 0.5 * x.square()).sum(dim=(1, 2, 3)).mean())


def test_the_identity_loss_backpropagates_into_the_generator_and_not_the_frozen_encoder(
    trained: TrainedModels,
) -> None:
    cfg = config("cond_gan", trained.data, trained.root / "models")
    encoder = IdentityEmbedding(cfg.model.identity_network)  # the fine-tuned encoder
    assert encoder.name == "effnet_contrastive"
    g = generator()
    real = torch.rand(4, 3, RESOLUTION, RESOLUTION) * 2 - 1
    fake = g(torch.randn(4, g.code_dim), torch.randn(4, COND_DIM))
    losses = likeness_losses({"identity": encoder}, fake, real)
    assert set(losses) == {"identity"} and 0 <= float(losses["identity"].detach()) <= 2
    losses["identity"].backward()
    assert g.to_rgb.weight.grad is not None and g.to_rgb.weight.grad.abs().sum() > 0
    frozen = list(encoder.parameters())
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)


def test_the_offline_perceptual_distance_is_named_for_what_it_is(trained: TrainedModels) -> None:
    cfg = config("cond_gan", trained.data, trained.root / "models")
    distance = PerceptualDistance(cfg.model.perceptual, 1.0)
    assert distance.name == "effnet_feature_distance"  # never called LPIPS
    images = torch.rand(2, 3, RESOLUTION, RESOLUTION) * 2 - 1
    other = torch.rand(2, 3, RESOLUTION, RESOLUTION) * 2 - 1
    assert torch.allclose(distance(images, images), torch.zeros(2), atol=1e-6)
    moving = other.clone().requires_grad_(True)
    apart = distance(moving, images)
    assert (apart > 0).all() and (apart <= 4).all()
    apart.sum().backward()
    assert moving.grad is not None and moving.grad.abs().sum() > 0
    levels = distance.levels(images)
    assert len(levels) > 1  # multi-layer
    torch.testing.assert_close(effnet_feature_distance(levels, levels), torch.zeros(2))


def test_the_parameter_regulariser_is_zero_at_the_prior_mean() -> None:
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])
    zero = parameter_prior_loss(mean[None], torch.zeros(1, 3), mean, std)
    assert float(zero) == 0
    one_std = parameter_prior_loss((mean + std)[None], torch.ones(1, 3), mean, std)
    assert float(one_std) == pytest.approx(2.0)


def test_the_pipeline_gives_each_costly_family_its_own_loop_settings() -> None:
    params = REPO_ROOT / "params.yaml"
    shared = load_params(params, model="vae").train
    for name in ("cond_gan", "translator"):
        own = load_params(params, model=name)
        assert own.train.steps == own.model.train.steps < shared.steps
        assert own.train.batch_size == own.model.train.batch_size
        assert own.train.log_every == shared.log_every  # the rest is the shared `train`
        assert own.model.reads.features == "data/features/32/effnet_lite0"
    assert load_params(params, model="translator").model.reads.network == "models/cond_gan/model.pt"


def test_the_translator_round_trip_holds_the_imitator_it_was_trained_on(
    trained: TrainedModels,
) -> None:
    translator = load_generator(trained.checkpoints["translator"])
    imitator = load_generator(trained.checkpoints["cond_gan"])
    for key, tensor in imitator.network.state_dict().items():
        torch.testing.assert_close(translator.network.state_dict()[f"imitator.{key}"], tensor)
    prior = imitator.family_state["condition_prior"]
    torch.testing.assert_close(translator.network.prior_mean, torch.tensor(prior["mean"]))


def test_a_translator_checkpoint_loads_without_the_imitators_file(
    trained: TrainedModels, tmp_path: Path
) -> None:
    """On another machine (a registered MLflow model) the cond_gan file its config names is
    not there: the translator's checkpoint alone rebuilds the same network."""
    state = torch.load(trained.checkpoints["translator"], weights_only=True)
    state["config"]["model"]["imitator_checkpoint"] = str(tmp_path / "elsewhere" / "model.pt")
    torch.save(state, tmp_path / "model.pt")
    moved = load_generator(tmp_path / "model.pt")
    original = load_generator(trained.checkpoints["translator"])
    features = torch.randn(2, int(original.config.model.features_dim))
    with torch.no_grad():  # the round trip from the head's input (here a test array's rows)
        torch.testing.assert_close(moved.network(features), original.network(features))
    samples = [
        loaded.sample(3, generator=torch.Generator().manual_seed(4)) for loaded in (moved, original)
    ]
    torch.testing.assert_close(*samples)


def test_a_missing_imitator_is_a_clear_error(trained: TrainedModels, tmp_path: Path) -> None:
    cfg = config(
        "translator", trained.data, tmp_path, f"model.imitator_checkpoint={tmp_path / 'none.pt'}"
    )
    with pytest.raises(Exception, match=r"Imitator cannot be loaded.*train@cond_gan"):
        TranslatorFamily.build_generator(cfg.model, RESOLUTION)


@pytest.mark.slow
def test_evaluation_judges_the_identity_gan_with_dlib_only(
    trained: TrainedModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluation loaded the encoder the generator trained against")

    monkeypatch.setattr("face_generation.networks.contrastive.load_contrastive_encoder", refused)
    monkeypatch.setattr("face_generation.features.conditions.identity_network", refused)
    monkeypatch.setattr(IdentityEmbedding, "__init__", refused)
    cfg = config(
        "cond_gan",
        trained.data,
        trained.root / "models",
        "eval.device=cpu",
        "eval.zero_shot.num_references=4",
        "eval.zero_shot.samples_per_reference=2",
        f"paths.metrics={tmp_path / 'metrics'}",
        f"paths.plots={tmp_path / 'plots'}",
    )
    evaluate(cfg)
    record = read_record(tmp_path / "metrics", "cond_gan")
    assert record is not None
    metrics = record["metrics"]
    for name in ("zero_shot_identity_cosine", "zero_shot_random_cosine"):
        assert metrics[name]["network"].startswith("dlib"), metrics[name]
        assert -1 <= metrics[name]["value"] <= 1
    assert np.isfinite(metrics["fd_effnet"]["value"])


@pytest.mark.slow
def test_the_translator_round_trip_improves_over_training(
    trained: TrainedModels, tmp_path: Path
) -> None:
    """200 CPU steps on the fixture's 48 real faces (CelebA-sample crops where ../shared/data
    is present): the round trip's objective falls. Through the fixture's 6-step Imitator, whose
    output hardly depends on its parameters, and from the tiny family's random feature rows,
    so it falls by little; the pixel error alone need not fall."""
    cfg = config(
        "translator", trained.data, tmp_path, "train.steps=200", "train.log_every=20",
        "train.sample_every=1000", "train.ckpt_every=1000", "model.optimizer.lr=0.01",
    )  # fmt: skip
    result = train(cfg, NullTracker())
    rows = (result.checkpoint.parent / "losses.csv").read_text().splitlines()
    header = rows[0].split(",")
    loss = [float(row.split(",")[header.index("loss")]) for row in rows[1:]]
    assert len(loss) == 10
    assert np.mean(loss[-3:]) < np.mean(loss[:2]), loss


@pytest.mark.slow
def test_inference_draws_variants_of_embedding_rows_and_refuses_broken_ones(
    trained: TrainedModels, tmp_path: Path
) -> None:
    rows = np.load(features_dir(trained.data, RESOLUTION) / "tiny" / "embedding" / "test.npy")
    np.save(tmp_path / "rows.npy", rows[:2].astype(np.float32))
    checkpoint = str(trained.checkpoints["cond_gan"])
    inference_main([checkpoint, "--embedding", str(tmp_path / "rows.npy"), "--n", "3",
                    "--out", str(tmp_path / "out")])  # fmt: skip
    assert len(list((tmp_path / "out" / "embeddings").glob("*.png"))) == 6
    broken = rows[:2].astype(np.float32)
    for value in (0.0, np.nan):
        broken[1] = value
        np.save(tmp_path / "broken.npy", broken)
        with pytest.raises(SystemExit, match=r"row\(s\) \[1\] are all zeros or not finite"):
            inference_main([checkpoint, "--embedding", str(tmp_path / "broken.npy")])
    np.save(tmp_path / "narrow.npy", rows[:2, :3].astype(np.float32))
    with pytest.raises(SystemExit, match=r"rows of shape \(3,\).*4-wide rows"):
        inference_main([checkpoint, "--embedding", str(tmp_path / "narrow.npy")])


def test_the_translator_draws_variants_that_keep_each_faces_embedding(
    trained: TrainedModels, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    translator = load_generator(trained.checkpoints["translator"])
    faces = np.load(trained.data / "packed" / str(RESOLUTION) / "test.npy")[:2]
    rows = np.load(features_dir(trained.data, RESOLUTION) / "tiny" / "embedding" / "test.npy")
    features = torch.from_numpy(rows[:2].astype(np.float32))  # the tiny rows: not from photos
    monkeypatch.setattr(TranslatorFamily, "photo_features", lambda network, images: features)
    images = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1
    variants = translator.variants(images, 3, seed=1)
    assert variants.shape == (6, 3, RESOLUTION, RESOLUTION)
    assert torch.equal(variants, translator.variants(images, 3, seed=1))  # seeded
    assert not torch.equal(variants[0], variants[1])  # the code redrawn
    embedding, _ = translator.network.head(features)
    with torch.no_grad():  # variant j of image i: the Imitator on image i's embedding
        again = translator.network.imitator(
            gaussian_latents(6, translator.network.head.code_dim, torch.device("cpu"),
                             torch.Generator().manual_seed(1)),
            embedding.repeat_interleave(3, dim=0),
        )  # fmt: skip
    torch.testing.assert_close(variants, again)
    face = tmp_path / "face.png"
    Image.fromarray(faces[0]).save(face)
    with pytest.raises(SystemExit, match="the vae family draws no variants"):
        inference_main([str(trained.checkpoints["vae"]), "--input", str(face), "--edit"])
