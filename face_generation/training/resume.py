"""Where a training run starts: from scratch, or from a checkpoint, by `train.resume`.

null       afresh (the earlier run's files are set aside; training/output.py)
auto       the newest checkpoint in models/<name>/checkpoints/; afresh when there is none;
           nothing to do when that checkpoint is the finished run (step = train.steps)
matching   what the pipeline uses: the newest checkpoint, but only when it is an
           interrupted run (step < train.steps) of the same configuration on the same
           data (data hash); anything else starts afresh. So `dvc repro` after Ctrl-C
           continues the run, and raising train.steps continues a finished one.
PATH       that checkpoint file
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from face_generation.runtime.checkpoint import CheckpointError, load_checkpoint, newest_checkpoint

# Settings that do not change what is trained: `matching` ignores them.
NOT_TRAINING = ("tracking", "paths", "eval", "ckpt", "serve")
# nproc: a run resumes with another number of processes on the same global batch order.
NOT_TRAINING_TRAIN = ("resume", "steps", "keep_checkpoints", "log_every", "sample_every",
                      "ckpt_every", "num_workers", "threads", "nproc", "dist_timeout_s")  # fmt: skip


@dataclass
class ResumePlan:
    checkpoint: Path | None = None  # None: start afresh
    state: dict[str, Any] | None = None  # the checkpoint, already read
    finished: bool = False  # the run is complete: nothing to train
    note: str | None = None  # what was decided and why, for the user


def plain(cfg: DictConfig) -> dict[str, Any]:
    """A resolved config as nested dicts with string keys (as checkpoints store it)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return {str(key): value for key, value in container.items()}


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the settings that do not change what is trained."""
    kept = {key: value for key, value in config.items() if key not in NOT_TRAINING}
    train = {key: value for key, value in config["train"].items() if key not in NOT_TRAINING_TRAIN}
    return {**kept, "train": train}


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: before → after` for every leaf that differs between two nested configs."""
    found = []
    for key in sorted({*saved, *current}):
        before, after = saved.get(key), current.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            found += differences(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append(f"{prefix}{key}: {before} → {after}")
    return found


def plan_resume(cfg: DictConfig, checkpoints: Path, data_hash: str) -> ResumePlan:
    """Decide where this run starts (see the module docstring)."""
    resume = cfg.train.resume
    steps = int(cfg.train.steps)
    if resume in (None, "", "null"):
        return ResumePlan()
    if resume not in ("auto", "matching"):
        path = Path(str(resume))
        if not path.is_file():
            raise CheckpointError(f"train.resume={resume}: checkpoint {path} does not exist")
        return ResumePlan(path, load_checkpoint(path, expected_model=str(cfg.model.name)))

    newest = newest_checkpoint(checkpoints)
    if newest is None:
        return ResumePlan(
            note=f"nothing to resume: no checkpoint in {checkpoints}; starting afresh"
        )
    state = load_checkpoint(newest, expected_model=str(cfg.model.name))
    if resume == "auto":
        if int(state["step"]) >= steps:
            note = (f"{cfg.model.name} already finished at step {state['step']} ({newest}): "
                    "nothing to train; raise train.steps to train on")  # fmt: skip
            return ResumePlan(newest, state, finished=True, note=note)
        return ResumePlan(newest, state)

    # matching: continue an interrupted run of the same configuration on the same data.
    changed = differences(comparable(state["config"]), comparable(plain(cfg)))
    if state.get("data_hash") != data_hash:
        changed.append(f"data hash: {state.get('data_hash')} → {data_hash}")
    if changed:
        return ResumePlan(
            note=f"starting afresh: the newest checkpoint {newest} was trained differently ("
            + "; ".join(changed[:5])
            + (", …" if len(changed) > 5 else "")
            + ")"
        )
    if int(state["step"]) >= steps:
        return ResumePlan(
            note=f"starting afresh: {newest} is a finished run of {state['step']} steps"
        )
    note = (f"resuming the interrupted run from {newest} (step {state['step']}): same "
            "configuration and data; train.resume=null starts afresh instead")  # fmt: skip
    return ResumePlan(newest, state, note=note)


def check_same_model(state: dict[str, Any], cfg: DictConfig, path: Path) -> None:
    """A resumed run must rebuild the same networks on the same data resolution."""
    current = plain(cfg)
    saved = state["config"]
    pairs = {f"model.{key}": (saved["model"].get(key), current["model"].get(key))
             for key in {*saved["model"], *current["model"]} - {"sampling"}}  # fmt: skip
    pairs["data.resolution"] = (saved["data"]["resolution"], current["data"]["resolution"])
    mismatched = [
        f"{key}: {before} in the checkpoint, {after} now"
        for key, (before, after) in sorted(pairs.items())
        if before != after
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {path} was trained with a different config and cannot be resumed:\n  "
            + "\n  ".join(mismatched)
            + "\nresume with the checkpoint's settings, or start afresh (train.resume=null)"
        )
