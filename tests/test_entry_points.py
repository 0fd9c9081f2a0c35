"""Every entry point checks its whole config before it loads anything: an unknown key or a
wrong type is one line and exit code 1, never a traceback; so are the model sources a user may
mistype."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from face_generation.serve import main as serve_main
from tests.conftest import REPO_ROOT, TrainedModels
from tests.tracking_fixtures import MlflowServer

ENTRY_POINTS = [
    "face_generation.train",
    "face_generation.evaluate",
    "face_generation.serve",
    "face_generation.features.__main__",
    "face_generation.evaluation.verification",
    "face_generation.evaluation.report",
    "face_generation.data.fetch",
    "face_generation.data.download",
    "face_generation.data.split",
    "face_generation.data.crop",
    "face_generation.data.pack",
    "face_generation.pipeline",
]


def entry(module: str) -> Callable[[list[str]], None]:
    main: Callable[[list[str]], None] = importlib.import_module(module).main
    return main


def one_line_error(main: Callable[[list[str]], None], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as failure:
        main(argv)
    message = str(failure.value)
    assert failure.value.code not in (0, None) and "\n" not in message, message
    assert " error: " in message, message
    return message


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_an_unknown_key_is_one_line(module: str) -> None:
    assert "nosuch is not a setting" in one_line_error(entry(module), ["nosuch.key=1"])


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_a_wrong_type_is_one_line(module: str) -> None:
    message = one_line_error(entry(module), ["train.steps=abc"])
    assert "Value 'abc' of type 'str' could not be converted to Integer" in message


@pytest.mark.parametrize(
    "setting",
    ["serve.port=abc", "serve.max_requests=abc", "serve.limits.max_n=abc", "serve.nosuch=1"],
)
def test_serve_checks_its_settings_before_loading_any_model(setting: str) -> None:
    message = one_line_error(serve_main, [setting, "+serve.models.x=/nonexistent/model.pt"])
    assert message.startswith(f"[serve] error: {setting.split('=')[0]}")


def test_model_sources_that_cannot_be_a_model_say_why(
    trained: TrainedModels, mlflow_server: MlflowServer
) -> None:
    from face_generation.inference import main as inference_main

    folder = str(trained.checkpoints["vae"].parent)
    assert "is a folder, not a checkpoint: name the file in it" in one_line_error(
        inference_main, [folder]
    )
    assert "an http(s) URL is not a model" in one_line_error(
        inference_main, ["http://127.0.0.1:9/x"]
    )
    registry_model = "+serve.models.x=models:/nosuch/latest"
    message = one_line_error(serve_main, [*mlflow_server.overrides, registry_model])
    assert "no version of a registered model 'nosuch'" in message
    # no server on that port: said at once (MLflow itself retries for minutes)
    message = one_line_error(serve_main, ["tracking.port=9", registry_model])
    assert "no MLflow server answers at http://127.0.0.1:9" in message


def test_ctrl_c_ends_a_stage_with_one_line_and_exit_code_130() -> None:
    """A real process in the middle of its work (waiting, as a stage waits on a subprocess or
    a file) gets SIGINT, as Ctrl-C in `make run` or during pack sends it."""
    script = (
        "import sys\n"
        "from face_generation.errors import reported_errors\n"
        "with reported_errors('pack'):\n"
        "    print('working', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert child.stdout is not None and child.stdout.readline() == "working\n"
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130
    assert stderr == "[pack] interrupted (Ctrl-C)\n"
