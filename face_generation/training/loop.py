"""The training loop: one function, `train(cfg)`, the same for every model family.

Read top to bottom: device → data → networks and optimisers → resume → tracking → steps
(each: a batch, the family's train_step, the EMA update; every so often: logging, sample
grids and checkpoints) → final checkpoint. Numbers all come from `cfg` (configs/train/).

Every family goes through the contract in runtime/family.py, so a new family changes nothing
here. The loop is rank-aware for data-parallel training: initial weights come from the same
seed on every rank, noise from a per-rank seed, batches from per-rank slices of one global
order; metrics are averaged over the ranks, and only rank 0 writes checkpoints, grids and
tracking records. With one process all of that is the plain single-process loop.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from face_generation.data.packed import features_dir, load_feature_split, load_split, read_meta
from face_generation.data.tables import packed_dir
from face_generation.errors import describe
from face_generation.runtime.checkpoint import (
    checkpoint_state,
    restore_training_state,
)
from face_generation.runtime.device import pick_device, use_threads
from face_generation.runtime.family import Family, StepContext
from face_generation.runtime.images import save_grid
from face_generation.runtime.registry import family_for
from face_generation.tracking.provenance import flatten_config
from face_generation.training.data import PackedBatches
from face_generation.training.device import rank_and_world_size, reduce_mean, step_context
from face_generation.training.distributed import (
    check_same_weights,
    process_group,
    rank_device,
    stop_requested,
)
from face_generation.training.ema import EMA
from face_generation.training.loss_log import LossLog
from face_generation.training.output import RunFolder, exclusive_writer, model_dir
from face_generation.training.settings import check_learning_rates, check_train_settings
from face_generation.training.tracker import (
    NullTracker,
    Tracker,
    close_orphaned_runs,
    create_tracker,
)


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; no checkpoint is written after that point."""


@dataclass
class TrainResult:
    step: int
    checkpoint: Path  # models/<name>/model.pt, or the step checkpoint written on a signal
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)  # last logged window means
    stopped_by: str | None = None  # "SIGINT"/"SIGTERM" when a signal ended the run early


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def seed_rank(seed: int, context: StepContext, step: int) -> None:
    """Give ranks other than 0 their own noise from here on (latents, dropout, diffusion
    noise); rank 0 keeps the stream a single-process run has, so one process is unchanged."""
    if context.rank:
        seed_everything(
            int(np.random.SeedSequence([seed, context.rank, step]).generate_state(1)[0])
        )


class SignalStop:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current step.

    A second SIGINT stops at once (KeyboardInterrupt), for when saving is not wanted.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        tqdm.write(
            f"[train] {self.received} received: checkpointing after this step, then stopping"
        )

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def window_means(
    sums: dict[str, torch.Tensor], steps: int, step: int, last_good: Path | None
) -> dict[str, float]:
    """Mean metrics of the steps since the last flush; the NaN/inf guard.

    A non-finite loss anywhere in the window makes its sum non-finite, so one device sync
    per window checks every step without slowing each one down.
    """
    means = {name: value.item() / steps for name, value in sums.items()}
    broken = {name: value for name, value in means.items() if not np.isfinite(value)}
    if broken:
        raise TrainingDiverged(
            f"training diverged: {broken} in the {steps} steps up to step {step}. No checkpoint "
            f"was written after this; the newest good one is {last_good or '(none)'}. Lower the "
            "learning rate (model.optimizer.lr), set train.grad_clip, or check the data"
        )
    return means


def train(cfg: DictConfig, tracker: Tracker | None = None) -> TrainResult:
    """Train `cfg.model` on the packed train split; returns where the result was written.

    Every setting is checked before anything is touched; the model's folder has one writer
    at a time. SIGINT/SIGTERM (from here on) make it checkpoint after the current step and
    return.
    """
    check_train_settings(cfg.train)
    check_learning_rates(cfg.model)
    # an unknown family, or arrays it cannot name, fail before any file is touched
    family_for(cfg).inputs_of(cfg.model)
    device = rank_device(pick_device(str(cfg.train.device)))
    with process_group(device, float(cfg.train.dist_timeout_s)), SignalStop() as stop:
        main_process = rank_and_world_size()[0] == 0
        with exclusive_writer(model_dir(cfg)) if main_process else nullcontext():
            return _train(cfg, tracker, stop, device)


def training_arrays(
    cfg: DictConfig, family: type[Family], split: str, rows: int | None = None
) -> dict[str, np.ndarray]:
    """The packed images of `split` and every feature array the family declares, row-aligned
    and memory-mapped; the first `rows` rows only when given."""
    resolution = int(cfg.data.resolution)
    arrays = {"images": load_split(packed_dir(cfg), split, resolution)}
    features = features_dir(Path(cfg.paths.data), resolution)
    for row_input in family.inputs_of(cfg.model):
        if row_input.name != "images":
            arrays[row_input.name] = load_feature_split(
                features, row_input.name, split, len(arrays["images"])
            )
    return {name: array[:rows] if rows is not None else array for name, array in arrays.items()}


def preview_condition(cfg: DictConfig, family: type[Family], n: int) -> torch.Tensor | None:
    """Fixed conditions for a conditional family's grids: its condition rows of the first n
    val images (tiled when the split is smaller); None for unconditional families."""
    condition = family.condition_of(cfg.model)
    if condition is None:
        return None
    rows = training_arrays(cfg, family, "val")[condition]
    return torch.from_numpy(np.asarray(rows[np.arange(n) % len(rows)])).float()


def end_failed_run(tracker: Tracker, error: BaseException, folder: RunFolder) -> None:
    """After `error`: end the tracking run and put back the earlier run's files (a fresh
    start's). The files come back whatever the tracker does (a full disk fails its last write
    too), and a failure here is printed, never raised over `error`."""
    try:
        tracker.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
    except Exception as failure:
        print(f"[train] could not end the tracking run: {describe(failure)}")
    finally:
        folder.give_back_previous()


def _train(
    cfg: DictConfig, tracker: Tracker | None, stop: SignalStop, device: torch.device
) -> TrainResult:
    train_cfg = cfg.train
    started = time.perf_counter()

    # Device and seeds: the same initial weights on every rank.
    use_threads(train_cfg.threads)
    context = step_context(device, train_cfg)
    seed = int(train_cfg.seed)
    seed_everything(seed)
    family_type = family_for(cfg)

    # Data: the packed uint8 train split and the family's feature arrays, never a JPEG.
    resolution = int(cfg.data.resolution)
    packed = packed_dir(cfg)
    arrays = training_arrays(cfg, family_type, "train")
    batch_size = int(train_cfg.batch_size)
    batches = PackedBatches(
        arrays,
        batch_size=batch_size,
        seed=seed,
        hflip=bool(train_cfg.hflip),
        device=device,
        on_device=device.type == "cuda",  # the whole split lives in GPU memory
        num_workers=int(train_cfg.num_workers),
        memory_format=context.memory_format,
        inputs=family_type.inputs_of(cfg.model),
        rank=context.rank,
        world_size=context.world_size,
    )

    # Networks, optimisers, EMA.
    family = family_type(cfg.model, resolution, context)
    family.prepare(arrays)
    generator = family.networks[family.generator_key]
    ema = EMA(generator, float(train_cfg.ema.decay)) if train_cfg.ema.enabled else None
    seed_rank(seed, context, 0)

    # Resume, or start afresh (the earlier run's files set aside until the first checkpoint).
    folder = RunFolder(cfg, writes=context.is_main)
    data_hash = str(read_meta(packed).get("data_hash", "unknown"))
    plan = folder.start(cfg, data_hash)
    if plan.finished:
        assert plan.state is not None
        return TrainResult(int(plan.state["step"]), folder.model_file, plan.state["run_id"])
    start_step, run_id = 0, None
    if plan.checkpoint is None:
        losses = LossLog(folder.path / "losses.csv")
    else:
        assert plan.state is not None
        restore_training_state(plan.state, family, ema.module if ema else None, plan.checkpoint)
        start_step, run_id = int(plan.state["step"]), plan.state.get("run_id")
        losses = LossLog.resumed(folder.path / "losses.csv", plan.state, start_step)
        seed_rank(seed, context, start_step)
        print(f"[train] resumed from {plan.checkpoint} at step {start_step} (run {run_id})")
        plan.state = None
    if train_cfg.compile:
        for network in family.networks.values():  # frozen networks stay as they are
            network.compile()

    # Tracking, on rank 0 only.
    if not context.is_main:
        tracker = NullTracker(run_id)
    if tracker is None and plan.checkpoint is None:
        close_orphaned_runs(cfg)  # runs of this model killed before their first checkpoint
    opened = tracker
    try:  # from here on a failure ends the run and gives the earlier files back
        opened = tracker = tracker or create_tracker(cfg, run_id, resume_step=start_step)
        if plan.checkpoint is None:
            tracker.log_params(flatten_config(cfg))
            tracker.log_dataset(packed, data_hash, len(arrays["images"]))
        tracker.set_tags(
            {
                "model": str(cfg.model.name),
                "data_hash": data_hash,
                "device": str(device),
                "seed": seed,
                "threads": torch.get_num_threads(),  # train.threads, or torch's choice
                "train_images": len(arrays["images"]),
                "world_size": context.world_size,  # processes (torchrun); batch is the global one
            }
        )
    except BaseException as error:
        end_failed_run(opened or NullTracker(run_id), error, folder)
        raise
    steps = int(train_cfg.steps)
    print(
        f"[train] {cfg.model.name} on {len(arrays['images'])} {resolution}×{resolution} faces "
        f"from {packed}, {device}, steps {start_step}→{steps}, batch {batch_size}"
        f"{f' over {context.world_size} processes' if context.world_size > 1 else ''}, "
        f"run {tracker.run_id}"
    )

    def save(step: int, final: bool = False) -> Path:
        check_same_weights(family.networks, context.world_size)
        state = None
        if context.is_main:
            ema_module = ema.module if ema else None
            state = checkpoint_state(
                cfg, family, ema_module, step, tracker.run_id, data_hash, losses.history()
            )
        return folder.save(step, state, final)

    grid_size = int(train_cfg.sample_grid)
    grid_condition = preview_condition(cfg, family_type, grid_size)

    def save_samples(step: int) -> None:
        if not context.is_main:
            return
        sampler = ema.module if ema else generator
        was_training = sampler.training
        sampler.eval()  # BatchNorm uses its running statistics
        with torch.no_grad():
            grid = family.preview(
                sampler, grid_size, torch.Generator().manual_seed(seed), grid_condition
            )
        sampler.train(was_training)
        if grid is not None:
            path = save_grid(grid, folder.samples / f"step-{step:08d}.png")
            tracker.log_image(path, "samples", step)

    # The steps.
    sums: dict[str, torch.Tensor] = {}
    metrics: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    step = start_step
    progress = tqdm(
        total=steps,
        initial=start_step,
        desc=f"train {cfg.model.name}",
        unit="step",
        mininterval=1.0,
        disable=not context.is_main,
    )
    try:
        for network in family.networks.values():
            network.train()
        for network in family.frozen.values():
            network.eval().requires_grad_(False)
        if start_step == 0:
            save_samples(0)  # the untrained start: MLflow's image card opens at step 0
        for batch in batches.iterate(start_step, steps):
            step_metrics = family.train_step(batch, step)
            step += 1
            if ema is not None:
                ema.update(generator, step)
            for name, value in step_metrics.items():
                sums[name] = sums[name] + value if name in sums else value.clone()
            window_steps += 1
            progress.update(1)

            stopping = stop_requested(stop.received, context.world_size)  # the same on every rank
            checkpoint_now = step % int(train_cfg.ckpt_every) == 0 or stopping is not None
            if step % int(train_cfg.log_every) == 0 or checkpoint_now or step == steps:
                metrics = window_means(
                    reduce_mean(sums, context), window_steps, step, folder.last_good
                )
                images_per_sec = window_steps * batch_size / (time.perf_counter() - window_start)
                tracker.log_metrics(
                    {
                        **{f"train/{k}": v for k, v in metrics.items()},
                        "train/images_per_sec": images_per_sec,
                    },
                    step=step,
                )
                if context.is_main:  # images/s depends on the machine: MLflow only
                    losses.append(step, metrics)
                progress.set_postfix_str(
                    f"{images_per_sec:.0f} img/s "
                    + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "grad" not in k)
                )
                sums, window_steps, window_start = {}, 0, time.perf_counter()
            if step % int(train_cfg.sample_every) == 0 and step != steps:
                save_samples(step)
            if checkpoint_now and step != steps:
                save(step)
            if stopping is not None and step != steps:
                progress.close()
                tracker.close("KILLED")
                print(f"[train] stopped by {stopping} at step {step}; checkpoint {folder.last_good}; "
                      "continue with train.resume=auto (under `dvc repro` or `make run`, "
                      "rerunning resumes by itself)")  # fmt: skip
                assert folder.last_good is not None
                return TrainResult(step, folder.last_good, tracker.run_id, metrics, stopping)
        progress.close()

        # The end: final checkpoint, model.pt beside it, final sample grid.
        if window_steps:
            metrics = window_means(reduce_mean(sums, context), window_steps, step, folder.last_good)
        final = save(step, final=True)
        save_samples(step)
        if context.is_main:
            grid_file = folder.samples / f"step-{step:08d}.png"
            if grid_file.is_file():
                shutil.copyfile(grid_file, folder.path / "samples.png")
            tracker.log_artifact(folder.path / "losses.csv")
            tracker.log_generator(folder.model_file, family_type, resolution)
    except BaseException as error:
        progress.close()
        end_failed_run(tracker, error, folder)
        raise
    tracker.close("FINISHED")
    print(f"[train] done: step {step} in {time.perf_counter() - started:.0f} s; {folder.model_file} "
          f"(checkpoint {final}), samples {folder.path / 'samples.png'}")  # fmt: skip
    return TrainResult(step, folder.model_file, tracker.run_id, metrics)
