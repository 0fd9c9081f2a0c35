"""Train one generator family on the packed faces: `python -m face_generation.train`.

Examples:
  python -m face_generation.train model=vae
  python -m face_generation.train model=dcgan train.steps=5000 data.resolution=64
  python -m face_generation.train model=vae train.resume=auto       (continue the last run)
  python -m face_generation.train --params params.yaml --model dcgan train.resume=matching
                                      (as `dvc repro` runs it: an interrupted run of the same
                                      settings and data continues, anything else starts afresh)

Writes models/<model>/model.pt (the final checkpoint), models/<model>/checkpoints/ (every
train.ckpt_every steps), models/<model>/samples/ (a grid every train.sample_every steps) and
models/<model>/samples.png. A fresh start keeps the earlier run's files (in
models/<model>/.previous/) until its first checkpoint; two trainings of one model at once are
refused. SIGINT or SIGTERM checkpoints and stops; resume with train.resume=auto.

Data-parallel: `train.nproc=N` reruns this command under torchrun with N processes (one per
GPU), the same as `torchrun --nproc_per_node=N -m face_generation.train ...`; torchrun's own
flags (--nnodes, --rdzv-endpoint) span several machines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from face_generation.config import model_config_from_args, model_stage_parser
from face_generation.errors import reported_errors
from face_generation.runtime.checkpoint import CheckpointError
from face_generation.training.distributed import (
    ProcessLost,
    RanksDiverged,
    torchrun_command,
    under_torchrun,
)
from face_generation.training.loop import TrainingDiverged, train
from face_generation.training.output import OutputBusyError


def main(argv: Sequence[str] | None = None) -> None:
    parser = model_stage_parser(__doc__ or "", "train")
    args = parser.parse_args(argv)
    with reported_errors(
        "train", CheckpointError, TrainingDiverged, OutputBusyError, RanksDiverged, ProcessLost
    ):
        cfg = model_config_from_args(args)
        if int(cfg.train.nproc) > 1 and not under_torchrun():
            # This process becomes torchrun: a signal to it reaches every training process.
            command = torchrun_command(int(cfg.train.nproc), sys.argv[1:] if argv is None else argv)
            print(f"[train] train.nproc={cfg.train.nproc}: {' '.join(command[2:])}", flush=True)
            os.execv(command[0], command)
        result = train(cfg)
    if result.stopped_by is not None:
        raise SystemExit(128 + {"SIGINT": 2, "SIGTERM": 15}[result.stopped_by])


if __name__ == "__main__":
    main()
