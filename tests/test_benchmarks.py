"""The GPU benchmark command (benchmarks/gpu.py) runs every family end to end at a tiny size on
the CPU, so that it works the day a GPU is lent; its GPU numbers are measured there, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.gpu import BATCH
from benchmarks.gpu import main as gpu_benchmark
from tests.faces import real_faces

FACES = 8


@pytest.mark.slow
def test_the_gpu_benchmark_runs_every_row_and_writes_its_table(tmp_path: Path) -> None:
    folder = tmp_path / "faces" / "img_align_celeba"  # CelebA layout, as --data takes it
    folder.mkdir(parents=True)
    for index, face in enumerate(real_faces(FACES, 89)):
        Image.fromarray(face).save(folder / f"{index:06d}.jpg")
    out = tmp_path / "results"
    tiny = ["--images", str(FACES), "--batch-size", "2", "--steps", "1", "--warmup", "0"]
    gpu_benchmark(
        ["--data", str(tmp_path / "faces"), *tiny, "--sampling-steps", "1", "--device", "cpu",
         "--workers", "0", "--out", str(out)]
    )  # fmt: skip

    report = json.loads((out / "gpu.json").read_text())
    contenders = [(row["model"], row["contender"]) for row in report["rows"]]
    assert contenders == [
        ("vae", "ours"),
        ("vae", "textbook loop"),
        ("dcgan", "ours"),
        ("dcgan", "textbook loop"),
        ("diffusion", "ours"),
        ("diffusion", "denoising-diffusion-pytorch"),
        ("encoder", "ours"),  # the conditional families: no peer
        ("cond_gan", "ours"),
        ("translator", "ours"),
        ("progressive", "ours"),
    ]
    assert {model for model, _ in contenders} == set(BATCH)  # every family
    for row in report["rows"]:
        assert row["train_images_per_s"] > 0
        # cond_gan's counted step is an R1 step, whose double backward the counter cannot follow
        assert (row["train_gflops_per_image"] is None) == (row["model"] == "cond_gan")
        assert row["peak_memory_gib"] is None and row["mfu"] is None  # not measured on a CPU
    sampled = {row["model"] for row in report["rows"] if row["sample_images_per_s"]}
    assert sampled == set(BATCH) - {"encoder"}  # the encoder embeds faces: nothing to sample
    table = (out / "gpu.md").read_text().splitlines()
    assert table[2].startswith("| model | contender | batch | dtype | compile | train img/s")
    assert len(table) == 4 + len(contenders)
