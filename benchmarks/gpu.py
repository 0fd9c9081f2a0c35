"""Benchmark: the families' training step and sampling on one GPU, end to end from the packed
arrays, beside the peers in the same process; one JSON and one markdown table.

    .venv/bin/python benchmarks/gpu.py [--data DIR] [--images N] [--compile off|on|both]
                                       [--steps S] [--warmup W] [--device D] [--out DIR]

It packs what it needs at run time (the first --images faces of --data, CelebA layout: default
../shared/data/celeba-sample-10k; centre crop 89x89 -> 64x64, as benchmarks/train_step.py), so
the repository alone is what a GPU machine needs. Rows, at 64x64:
  vae, dcgan  ours: batches from training/data.py:PackedBatches (the uint8 array on the GPU,
              gathered, flipped and normalised there), the family's train_step under the loop's
              step set-up (training/device.py: bf16 autocast, channels_last, TF32), with and
              without torch.compile; peer: the same networks in benchmarks/train_step.py's
              textbook loop (torchvision ImageFolder decoding JPEGs, DataLoader, float32);
  diffusion   ours: the family, unconditional, at benchmarks/diffusion.py's size matched to
              the peer; peer: lucidrains' denoising-diffusion-pytorch (Unet + GaussianDiffusion,
              the same objective); sampling: DDIM with --sampling-steps steps;
  encoder, cond_gan, translator, progressive
              ours only (no peer on PyPI), their default configs, their steps numbered from
              STEADY_STEP (the progressive generator at full resolution). The packed faces are
              written as the pack stage leaves them, and the features stage's own code writes
              the arrays they read beside them (the backbone's embedding and pyramids; the
              labels of a set without identities: each face its own partner); batches come from
              those files through the loop's own training_arrays and PackedBatches. The
              networks they load frozen are checkpoints written first from freshly built
              families (the encoder for cond_gan's identity loss, a cond_gan as the
              Translator's Imitator): their weights do not change the cost. The encoder embeds
              faces, so it has no sampling column.
Columns: training img/s (a full step: data, forward, backward, update), sampling img/s, batch,
dtype, compile, peak GPU memory, and MFU: the step's FLOPs (counted once by torch's
FlopCounterMode, a multiply-add = 2) times its rate over the device's dense bf16 peak
(DEVICE_PEAK_TFLOPS, or --peak-tflops). On the CPU (a tiny check of the script) memory and
MFU are not measured. Writes <out>/gpu.json and <out>/gpu.md (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # the peer's sampler draws progress bars

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.diffusion import MATCHED, Peer  # noqa: E402
from benchmarks.machine import machine  # noqa: E402
from benchmarks.train_step import (  # noqa: E402
    RESOLUTION,
    SAMPLE,
    backend_settings,
    pack_images,
    restore_backend_settings,
    textbook_batches,
)
from face_generation.config import compose  # noqa: E402
from face_generation.data.packed import features_dir  # noqa: E402
from face_generation.data.tables import packed_dir  # noqa: E402
from face_generation.features.labels import UNKNOWN  # noqa: E402
from face_generation.features.stage import meta_of, write_labels  # noqa: E402
from face_generation.features.stage import run as run_features  # noqa: E402
from face_generation.runtime.checkpoint import checkpoint_state, save_checkpoint  # noqa: E402
from face_generation.runtime.device import computes_in_bf16  # noqa: E402
from face_generation.runtime.family import SAMPLE as CAN_SAMPLE  # noqa: E402
from face_generation.runtime.family import Batch, Family, StepContext  # noqa: E402
from face_generation.runtime.registry import family_class, family_for  # noqa: E402
from face_generation.training.data import PackedBatches  # noqa: E402
from face_generation.training.device import step_context  # noqa: E402
from face_generation.training.loop import training_arrays  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), by device name.
DEVICE_PEAK_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "A100": 312.0}
# The issue's batches: 2x the reference implementations' model step alone at these sizes.
# The families after them: 64, the diffusion row's (no target yet). In training order: a family
# runs after those whose checkpoints it loads (`trained_after`).
BATCH = {"vae": 144, "dcgan": 128, "diffusion": 64, "encoder": 64, "cond_gan": 64,
         "translator": 64, "progressive": 64}  # fmt: skip
OVERRIDES = {"diffusion": ["model.condition=null", *MATCHED]}
DATA_HASH = "gpu-benchmark"  # the packed arrays' meta.json and the features' (they must agree)
# The step numbers train_step is given: training's steady state (the progressive generator grown
# to full resolution; a multiple of cond_gan's R1 interval and progressive's pyramid interval,
# so the timed steps include those steps at their share)
STEADY_STEP = 1_000_000
HELD_OUT = 4  # rows of the val and test splits (the features stage writes every split)
TEXTBOOK = ("vae", "dcgan")  # the families benchmarks/train_step.py's textbook loop runs


@dataclass
class Row:
    model: str
    contender: str  # "ours" or the peer's name
    batch: int
    dtype: str
    compile: bool
    train_images_per_s: float
    sample_images_per_s: float | None
    peak_memory_gib: float | None
    train_gflops_per_image: float | None
    mfu: float | None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(step: Callable[[], object], images: int, count: int, device: torch.device) -> float:
    """Images per second over `count` calls of `step`, each handling `images` images."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        step()
    synchronize(device)
    return count * images / (time.perf_counter() - started)


def gflops(step: Callable[[], object], images: int) -> float | None:
    """FLOPs of one call of `step` per image, in GFLOPs; None for a step the counter cannot
    follow (cond_gan's R1 step: a double backward through autograd.grad), which still runs."""
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    except RuntimeError as error:
        if "autograd.grad" not in str(error):
            raise
        step()
        return None
    return counter.get_total_flops() / images / 1e9


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DEVICE_PEAK_TFLOPS.items() if key in name), None)


class Measurement:
    """Shared settings of every row: device, step counts, the peak FLOPs for the MFU."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        self.on_cuda = device.type == "cuda"
        self.peak = peak_tflops(device, args.peak_tflops)

    def calls(self) -> int:
        """Steps one row may take: warm-up, the FLOP count (and its rerun), the timed ones."""
        return self.args.warmup + 2 + self.args.steps

    def row(
        self,
        model: str,
        contender: str,
        batch: int,
        dtype: str,
        compiled: bool,
        step: Callable[[], object],
        sample: Callable[[], object] | None,
    ) -> Row:
        """Warm up, count the step's FLOPs (uncompiled, before timing), time steps and one
        sampling call, and read the peak memory of all of it."""
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(self.args.warmup):
            step()
        flops = gflops(step, batch) if not compiled else None
        rate = throughput(step, batch, self.args.steps, self.device)
        sampled = None
        if sample is not None:
            with torch.no_grad():
                sampled = throughput(sample, batch, 1, self.device)
        memory = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.on_cuda else None
        mfu = rate * flops * 1e9 / (self.peak * 1e12) if flops and self.peak else None
        row = Row(model, contender, batch, dtype, compiled, rate, sampled, memory, flops, mfu)
        print(f"  {model} {contender} compile={compiled}: {rate:.0f} img/s", flush=True)
        return row


def model_config(model: str, workspace: Path) -> DictConfig:
    """The model's default config at RESOLUTION, its data and checkpoints under `workspace`."""
    return compose(
        "config",
        [f"model={model}", f"data.resolution={RESOLUTION}", f"paths.models={workspace / 'models'}",
         f"paths.data={workspace / 'data'}", *OVERRIDES.get(model, [])],
    )  # fmt: skip


def our_family(
    model: str, context: StepContext, compiled: bool, workspace: Path, arrays: dict[str, np.ndarray]
) -> Family:
    """The family built from its config, prepared on its arrays (its random conditions)."""
    cfg = model_config(model, workspace)
    torch.manual_seed(0)
    family = family_for(cfg)(cfg.model, RESOLUTION, context)
    family.prepare(arrays)
    if compiled:
        for network in family.networks.values():
            network.compile()
    return family


def pipeline_data(
    packed: np.ndarray, workspace: Path, device: torch.device, features: bool
) -> None:
    """workspace/data as the data and features stages leave it, for the packed faces: the packed
    splits (train: every face; val and test: its first rows, which no step reads) and, when
    `features`, the features stage's own code writing the labels (identities unknown: each face
    its own partner) and the backbone's embedding and pyramids."""
    cfg = compose("config", [f"data.resolution={RESOLUTION}", f"paths.data={workspace / 'data'}",
                             f"features.device={device}"])  # fmt: skip
    folder = packed_dir(cfg)
    folder.mkdir(parents=True)
    splits = {"train": packed, "val": packed[:HELD_OUT], "test": packed[:HELD_OUT]}
    for split, faces in splits.items():
        np.save(folder / f"{split}.npy", faces)
    (folder / "meta.json").write_text(json.dumps({"data_hash": DATA_HASH}))
    if not features:
        return
    unknown = {split: np.full(len(faces), UNKNOWN, np.int64) for split, faces in splits.items()}
    meta = meta_of(cfg, "labels", DATA_HASH, {"name": "labels", "source": "gpu benchmark"})
    labels = features_dir(workspace / "data", RESOLUTION)
    write_labels(labels, splits, unknown, meta, int(cfg.features.partner_seed))
    run_features(cfg, ["backbone"])


def write_checkpoint(model: str, workspace: Path) -> None:
    """models/<model>/model.pt of a freshly built family (float32 on the CPU), for the families
    that load it frozen."""
    cfg = model_config(model, workspace)
    context = StepContext(
        torch.device("cpu"), contextlib.nullcontext, None, torch.contiguous_format
    )
    family = our_family(model, context, False, workspace, family_arrays(model, workspace))
    state = checkpoint_state(cfg, family, None, 0, "", DATA_HASH, {})
    save_checkpoint(state, workspace / "models" / model / "model.pt")


def prerequisites(models: list[str]) -> list[str]:
    """The families whose checkpoints the chosen ones load (`trained_after`, transitively), in
    training order."""
    needed, todo = set(), list(models)
    while todo:
        for before in family_class(todo.pop()).trained_after:
            if before not in needed:
                needed.add(before)
                todo.append(before)
    return [model for model in BATCH if model in needed]


def needs_features(models: list[str], workspace: Path) -> bool:
    """Whether a chosen family (or one it loads) reads arrays besides the faces."""
    for model in [*models, *prerequisites(models)]:
        cfg = model_config(model, workspace)
        if len(family_for(cfg).inputs_of(cfg.model)) > 1:
            return True
    return False


def family_arrays(model: str, workspace: Path) -> dict[str, np.ndarray]:
    """The packed faces and every array the family declares, as the loop opens them."""
    cfg = model_config(model, workspace)
    return training_arrays(cfg, family_for(cfg), "train")


def ours(
    measure: Measurement,
    model: str,
    context: StepContext,
    compiled: bool,
    batch: int,
    workspace: Path,
) -> Row:
    cfg = model_config(model, workspace)
    inputs = family_for(cfg).inputs_of(cfg.model)
    mine = family_arrays(model, workspace)
    family = our_family(model, context, compiled, workspace, mine)
    source = PackedBatches(
        mine, batch, seed=0, hflip=True, device=measure.device, on_device=measure.on_cuda,
        memory_format=context.memory_format, inputs=inputs,
    )  # fmt: skip
    calls = measure.calls()
    batches: Iterator[Batch] = source.iterate(0, calls)
    steps = iter(range(STEADY_STEP, STEADY_STEP + calls))
    network = family.networks[family.generator_key]
    options = (
        {"steps": measure.args.sampling_steps, "sampler": "ddim"} if model == "diffusion" else {}
    )

    def sample() -> object:
        network.eval()
        images = family.sample(network, batch, generator=None, **options)
        network.train()
        return images

    precision = str(compose("config").train.precision)
    dtype = "bf16" if computes_in_bf16(torch.device(measure.device), precision) else "fp32"
    return measure.row(
        model,
        "ours",
        batch,
        dtype,
        compiled,
        lambda: family.train_step(next(batches), next(steps)),
        sample if CAN_SAMPLE in family.capabilities else None,
    )


def textbook(measure: Measurement, model: str, data: Path, batch: int) -> Row:
    """The same networks in benchmarks/train_step.py's textbook loop (float32, no compile)."""
    context = StepContext(measure.device, contextlib.nullcontext, None, torch.contiguous_format)
    with tempfile.TemporaryDirectory() as workspace:
        family = our_family(model, context, False, Path(workspace), {"images": np.empty(0)})
    loader = textbook_batches(
        data, measure.args.images, batch, measure.args.workers, measure.device
    )
    steps = iter(range(measure.calls()))
    with contextlib.closing(loader):  # closing stops the loader's worker processes
        return measure.row(
            model, "textbook loop", batch, "fp32", False,
            lambda: family.train_step(next(loader), next(steps)), None,
        )  # fmt: skip


def diffusion_peer(
    measure: Measurement, context: StepContext, packed: torch.Tensor, batch: int
) -> Row:
    """denoising-diffusion-pytorch on the same faces (its step reads a ready batch: no data path)."""
    peer = Peer(measure.device)
    peer.diffusion.sampling_timesteps = measure.args.sampling_steps
    images = packed[:batch].to(measure.device).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    images = images.contiguous(memory_format=context.memory_format)
    dtype = "bf16" if measure.on_cuda else "fp32"
    return measure.row(
        "diffusion", "denoising-diffusion-pytorch", batch, dtype, False,
        lambda: peer.train_step(images, context), lambda: peer.sample(batch),
    )  # fmt: skip


def markdown(rows: list[Row], title: str) -> str:
    def number(value: float | None, form: str) -> str:
        return "—" if value is None else format(value, form)

    lines = [
        title,
        "",
        "| model | contender | batch | dtype | compile | train img/s | sample img/s | peak memory GiB | train GFLOPs/img | MFU |",
        "| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.contender} | {row.batch} | {row.dtype} | {'on' if row.compile else 'off'} "
            f"| {row.train_images_per_s:.0f} | {number(row.sample_images_per_s, '.0f')} "
            f"| {number(row.peak_memory_gib, '.2f')} | {number(row.train_gflops_per_image, '.2f')} "
            f"| {'—' if row.mfu is None else f'{row.mfu:.1%}'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=SAMPLE, help="faces in CelebA layout (img_align_celeba/)"
    )
    parser.add_argument("--images", type=int, default=4096, help="faces packed (default 4096)")
    parser.add_argument("--models", nargs="+", default=list(BATCH), choices=list(BATCH))
    parser.add_argument(
        "--batch-size", type=int, default=None, help="one batch for every model (default: BATCH)"
    )
    parser.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default=None,
        help="default: both on CUDA, off on CPU",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default 200 on CUDA, 2 on CPU)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 30 on CUDA, 1 on CPU)"
    )
    parser.add_argument(
        "--sampling-steps", type=int, default=50, help="DDIM steps of both diffusion samplers"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="textbook DataLoader workers",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak (default: by name)",
    )
    parser.add_argument("--no-peers", action="store_true", help="ours only")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)  # fmt: skip

    if not (args.data / "img_align_celeba").is_dir():
        raise SystemExit(
            f"no faces at {args.data}/img_align_celeba (CelebA layout): pass --data DIR"
        )
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    on_cuda = device.type == "cuda"
    args.steps = args.steps or (200 if on_cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (30 if on_cuda else 1)
    compile_choice = args.compile or ("both" if on_cuda else "off")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[compile_choice]
    started = time.perf_counter()
    packed = pack_images(datasets.ImageFolder(str(args.data)), args.images)
    print(f"packed {len(packed)} faces in {time.perf_counter() - started:.1f} s; device {device}")

    measure = Measurement(args, device)
    textbook_settings = backend_settings()  # PyTorch's own, for the textbook loop
    context = step_context(device, compose("config").train)
    our_settings = backend_settings()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-benchmark-") as folder:
        workspace = Path(folder)
        started_features = time.perf_counter()
        pipeline_data(packed, workspace, device, needs_features(args.models, workspace))
        print(f"packed arrays and features in {time.perf_counter() - started_features:.1f} s")
        for model in prerequisites(args.models):
            write_checkpoint(model, workspace)
        for model in args.models:
            batch = args.batch_size or BATCH[model]
            restore_backend_settings(our_settings)
            rows += [
                ours(measure, model, context, compiled, batch, workspace) for compiled in compiles
            ]
            if args.no_peers:
                continue
            if model == "diffusion":
                rows.append(diffusion_peer(measure, context, torch.from_numpy(packed), batch))
            elif model in TEXTBOOK:
                restore_backend_settings(textbook_settings)
                rows.append(textbook(measure, model, args.data, batch))

    name = torch.cuda.get_device_name(device) if on_cuda else f"CPU ({os.cpu_count()} cores)"
    title = (
        f"{name}, {time.strftime('%Y-%m-%d')}, {RESOLUTION}x{RESOLUTION}, {len(packed)} faces, "
        f"{args.steps} timed steps after {args.warmup}, DDIM-{args.sampling_steps} sampling"
    )
    table = markdown(rows, title)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "gpu",
        "machine": machine(),
        "device": name,
        "peak_bf16_tflops": measure.peak,
        "seconds": time.perf_counter() - started,
        "settings": {key: str(value) for key, value in vars(args).items()},
        "rows": [asdict(row) for row in rows],
    }
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu.md").write_text(table)
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'} in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
