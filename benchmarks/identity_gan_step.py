"""Benchmark: images/s of a full training step of the identity-conditioned GAN (model=cond_gan,
lazy R1 included, amortised) and of the Translator (model=translator), and where the time goes.

    .venv/bin/python benchmarks/identity_gan_step.py [--resolution R] [--batch B] [--steps S]
        [--encoder models/encoder/model.pt] [--imitator models/cond_gan/model.pt]

Both families are built from configs/ (model=cond_gan, model=translator at data.resolution=R)
with the step set-up of training/device.py (on CUDA: bf16 autocast, channels_last, fused Adam)
and run their real `train_step` on a batch of random pixels and random condition rows (the
cost does not depend on the content). The parts are timed alone on the same batch: the
generator's and the discriminator's forward and backward, R1 (every r1_every steps: its
amortised share), the frozen identity encoder (the reference's forward without gradients, the
generated face's forward and backward) and the perceptual network (the same). They need the
fine-tuned encoder's checkpoint (`dvc repro train_encoder`); the Translator also an Imitator
(a cond_gan checkpoint at the same resolution: `dvc repro train@cond_gan`), else it is skipped.
Prints a table and writes benchmarks/results/identity_gan_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from face_generation.config import compose  # noqa: E402
from face_generation.families.cond_gan import r1_penalty  # noqa: E402
from face_generation.runtime.conditioning import array_name  # noqa: E402
from face_generation.runtime.family import Batch  # noqa: E402
from face_generation.runtime.registry import family_for  # noqa: E402
from face_generation.training.device import step_context  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "identity_gan_step.json"


def timed(work: Callable[[], object], steps: int, device: torch.device) -> float:
    """Seconds per call of `work`, after one untimed call."""
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def build(name: str, args: argparse.Namespace, device: torch.device) -> tuple[object, Batch]:
    overrides = [
        f"model={name}",
        f"data.resolution={args.resolution}",
        f"train.batch_size={args.batch}",
        f"model.identity_network.checkpoint={args.encoder}",
    ]
    if name == "translator":
        overrides.append(f"model.imitator_checkpoint={args.imitator}")
    cfg = compose("config", overrides)
    context = step_context(device, cfg.train)
    family = family_for(cfg)(cfg.model, args.resolution, context)
    n, side = args.batch, args.resolution
    images = (torch.rand(n, 3, side, side, device=device) * 2 - 1).contiguous(
        memory_format=context.memory_format
    )
    declared = cfg.model.condition if name == "cond_gan" else cfg.model.inputs.features
    width = int(cfg.model.cond_dim if name == "cond_gan" else cfg.model.features_dim)
    features = {array_name(declared): torch.randn(n, width, device=device)}
    if name == "cond_gan":
        family.prepare({array_name(declared): torch.randn(2 * n, width).numpy()})
    return family, Batch(images, torch.arange(n), features)


def cond_gan_parts(family, batch: Batch, steps: int, device: torch.device) -> dict[str, float]:  # type: ignore[no-untyped-def]
    g, d, real = family.generator, family.discriminator, batch.images
    n = len(real)
    cond = next(iter(batch.features.values()))
    code = torch.randn(n, g.code_dim, device=device)
    noise = [torch.randn(shape, device=device) for shape in g.noise_shapes(n)]
    fake = g(code, cond, None, noise).detach().requires_grad_(True)
    ctx = family.context.autocast
    parts: dict[str, float] = {}

    def generator() -> None:
        with ctx():
            out = g(code, cond, None, noise)
        out.float().mean().backward()

    def discriminator() -> None:
        with ctx():
            logits = d(torch.cat([real, fake.detach()]), torch.cat([cond, cond]))
        logits.float().mean().backward()

    def r1() -> None:
        with ctx():
            penalty = r1_penalty(d, real, cond)
        penalty.backward()

    parts["generator fwd+bwd"] = timed(generator, steps, device)
    parts["discriminator fwd+bwd (real+fake)"] = timed(discriminator, steps, device)
    parts["R1 (amortised)"] = timed(r1, steps, device) / family.r1_every
    for name, network in family.frozen.items():

        def frozen(network=network, name=name) -> None:  # type: ignore[no-untyped-def]
            with ctx():
                value = network(fake) if name == "identity" else network(fake, real)
                if name == "identity":
                    with torch.no_grad():
                        network(real)
            value.float().sum().backward()

        parts[f"{name} network fwd+bwd"] = timed(frozen, steps, device)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--encoder", type=Path, default=REPO / "models" / "encoder" / "model.pt")
    parser.add_argument("--imitator", type=Path, default=REPO / "models" / "cond_gan" / "model.pt")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if not args.encoder.is_file():
        sys.exit(f"no fine-tuned encoder at {args.encoder}: run `dvc repro train_encoder` first")
    device = torch.device(args.device)
    results: dict[str, dict[str, float]] = {}
    for name in ("cond_gan", "translator"):
        if name == "translator" and not args.imitator.is_file():
            print(f"translator skipped: no Imitator at {args.imitator}")
            continue
        family, batch = build(name, args, device)

        def train_step(family=family, batch=batch, step=[0]) -> None:  # type: ignore[no-untyped-def]  # noqa: B006 (the step counter)
            family.train_step(batch, step[0])
            step[0] += 1

        # whole R1 cycles, so that the lazy penalty counts as often as in training
        cycles = max(1, args.steps // getattr(family, "r1_every", 1))
        seconds = timed(train_step, cycles * getattr(family, "r1_every", 1), device)
        parts = {"full step": seconds}
        if name == "cond_gan":
            parts.update(cond_gan_parts(family, batch, args.steps, device))
        results[name] = {key: value * 1000 for key, value in parts.items()}
        print(
            f"\n{name}: {args.batch / seconds:.1f} img/s ({args.batch} images of {args.resolution} px)"
        )
        for part, ms in results[name].items():
            print(f"  {part:<36} {ms:8.1f} ms")
    machine = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "args": vars(args) | {"encoder": str(args.encoder), "imitator": str(args.imitator)},
                "machine": machine,
                "ms": results,
            },
            indent=2,
        )
    )
    print(f"\n{machine}\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
