"""face_generation: train, evaluate and serve face-image generators with DVC and MLflow."""

import importlib.util
import sys

__version__ = "0.1.0"

# `dvc repro` runs each stage's `python` from PATH: without the project's venv active that is
# a Python without the dependencies. Say what to do instead of a ModuleNotFoundError.
if importlib.util.find_spec("omegaconf") is None:
    raise SystemExit(
        f"face_generation: {sys.executable} lacks the project's dependencies. Activate the "
        "project's venv (`source .venv/bin/activate`, after `make install`) and run again"
    )
