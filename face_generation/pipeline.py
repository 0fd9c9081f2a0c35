"""The main job: `python -m face_generation.pipeline` (what `make run` calls).

Writes params.yaml from configs/ (with any overrides given), then runs `dvc repro`, which
runs only the stages whose code, parameters or inputs changed, and says where to look.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from face_generation.config import compose

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


def run_dvc(arguments: Sequence[str]) -> None:
    command = [sys.executable, "-m", "dvc", *arguments]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"`dvc {' '.join(arguments)}` failed with exit code {result.returncode}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python -m face_generation.pipeline data=folder data.path=../shared/data/celeba-sample-10k",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for configs/pipeline.yaml")
    parser.add_argument(
        "--force", action="store_true", help="rerun every stage (dvc repro --force)"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if write_params(args.overrides):
        print("[pipeline] params.yaml rewritten from configs/")
    run_dvc(["repro", *(["--force"] if args.force else [])])
    print(f"[pipeline] done in {time.perf_counter() - started:.0f} s. Look at:")
    print("  metrics/data.json       images in, out and skipped by reason (`dvc metrics show`)")
    print(f"  {Path('data/packed')}/     packed uint8 arrays, one per split")


if __name__ == "__main__":
    main()
