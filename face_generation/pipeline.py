"""The main job: `python -m face_generation.pipeline` (what `make run` calls).

Writes params.yaml from configs/ (with any overrides given), starts the local MLflow server
unless one runs (it boots while the data stages run; training spools to disk until it
answers), fetches the raw data into data/sources/ and records it in `data.dvc` (`dvc
commit`: DVC versions the raw data, which no stage may output), runs `dvc repro`, which runs
only the stages whose code, parameters or inputs changed, delivers any records the server
missed, and says where to look. The server keeps running for the UI: stop it with
`python -m face_generation.tracking.server stop`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from face_generation.config import add_config_options, compose, job_config, refuse_multirun
from face_generation.errors import reported_errors
from face_generation.tracking.server import ui_url

DATA_DVC, DATA_DVC_OUT = "data.dvc", "data/sources"  # the raw data DVC versions, and its path
PARAMS_HEADER = (
    "# Generated from configs/ by `python -m face_generation.config`; never edit by hand.\n"
)


def write_params(overrides: Sequence[str], path: Path = Path("params.yaml")) -> bool:
    """Compose configs/pipeline.yaml into params.yaml; True when the file changed."""
    text = PARAMS_HEADER + OmegaConf.to_yaml(compose("pipeline", overrides), resolve=True)
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def start_tracking(cfg: DictConfig) -> str | None:
    """Launch the MLflow server unless one answers; its URI, or None when it cannot start."""
    from face_generation.tracking.server import ServerError, start_server

    try:
        return start_server(cfg, wait=False)
    except ServerError as error:
        print(f"[pipeline] {error}\n[pipeline] training goes on and keeps its records on disk")
        return None


def deliver_pending(cfg: DictConfig) -> None:
    """Send what training could not deliver (the server came up late or went away)."""
    from face_generation.tracking.server import ServerError, start_server
    from face_generation.tracking.sync import pending_spools, sync_all

    if not pending_spools(cfg.spool_dir):
        return
    try:
        start_server(cfg)  # waits for the server launched at the start, if still booting
    except ServerError as error:
        print(f"[pipeline] {error}")
        return
    for result in sync_all(cfg):
        print(f"[pipeline] MLflow records of run {result.local_key}: {result.message}")


def run_dvc(arguments: Sequence[str]) -> None:
    command = [sys.executable, "-m", "dvc", *arguments]
    # Stage commands say `python`: make it this interpreter (the project venv's).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"`dvc {' '.join(arguments)}` failed with exit code {result.returncode}")


def fetch_sources(cfg: DictConfig) -> None:
    """Fetch the raw data, then point data.dvc at what is there (a no-op when unchanged)."""
    from face_generation.data import fetch

    sources = fetch.run(cfg)
    if Path(DATA_DVC).is_file() and sources.resolve() == Path(DATA_DVC_OUT).resolve():
        run_dvc(["commit", "--force", "--quiet", DATA_DVC])


def activate_command() -> str | None:
    """The command that puts this interpreter's `python` and `dvc` on PATH in a shell (the
    stages run `python` from PATH), or None when it has no venv activate script."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "activate").is_file():
        return None
    if bin_dir.is_relative_to(Path.cwd()):
        bin_dir = bin_dir.relative_to(Path.cwd())
    return f"source {bin_dir / 'activate'}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Example: python -m face_generation.pipeline data=folder "
            "data.path=../shared/data/celeba-sample-10k\n"
            "Sweeps (Hydra's -m) run as DVC experiments, one per combination:\n"
            "  dvc exp run --queue -S 'train.steps=1000,2000' && dvc queue start"
        ),
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for configs/pipeline.yaml")
    parser.add_argument(
        "--force", action="store_true", help="rerun every stage (dvc repro --force)"
    )
    add_config_options(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with reported_errors("pipeline"):
        refuse_multirun(args)
        cfg = job_config(compose("pipeline", args.overrides), args)
    with reported_errors("pipeline"):  # Ctrl-C included: one line, the stages say the rest
        if write_params(args.overrides):
            print("[pipeline] params.yaml rewritten from configs/")
        uri = start_tracking(cfg.tracking) if cfg.tracking.enabled else None
        fetch_sources(cfg)
        run_dvc(["repro", *(["--force"] if args.force else [])])
        if uri is not None:
            deliver_pending(cfg.tracking)
    print(f"[pipeline] done in {time.perf_counter() - started:.0f} s. Look at:")
    if uri is not None:
        print(f"  {'MLflow UI':<24}{ui_url(uri)}: runs, curves, sample grids, registered models")
    print("  plots/report.md         one metrics table across the trained models")
    print(f"  {cfg.paths.models + '/<model>/':<24}model.pt, samples.png, losses.csv")
    print("  metrics/                <model>.json, features.json: scores (`dvc metrics show|diff`)")
    print("  plots/                  sample, real-vs-generated, nearest-neighbour grids")
    print("  dvc_plots/index.html    loss curves and grids, after `dvc plots show`")
    if (activate := activate_command()) is not None:
        print(f'[pipeline] for the dvc commands (README, "DVC"), first: {activate}')


if __name__ == "__main__":
    main()
