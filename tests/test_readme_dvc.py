"""README.md's "DVC" section, every command run as written, in its order, with the real `dvc` CLI.

The commands run in a fresh git repository holding a copy of the project (tracked and
untracked files, as a clone after `make install` has them): each in `bash` after
`source .venv/bin/activate`, where .venv is a link to the venv running the tests. The copy's
MLflow settings (configs/tracking/default.yaml, and params.yaml composed from it) point at the
tests' server and are committed there, so the copy's params.yaml is its default one.

The tests below share that repository and run in file order: each README command block
continues from where the one before left it. Only `/path/to/faces` is replaced (by a folder
of three images).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.project_copy import copy_project
from tests.tracking_fixtures import MlflowServer

WIDTH = 120  # columns of the terminal the tables must fit
# How far a score may drift from the committed one on a machine with other CPU kernels
# (README, "DVC"): a quarter of it, or 0.1 for the shares over the ten test faces.
TOLERANCE, SHARE_STEP = 0.25, 0.1
FACES_PLACEHOLDER = "/path/to/faces"
# the generators configs/pipeline.yaml trains
MODELS = ("vae", "dcgan", "diffusion", "progressive", "cond_gan", "translator")
LOSS_COLUMNS = {  # the `plots:` of dvc.yaml: the losses of each family and of the face encoder
    "vae": ("loss", "reconstruction", "kl"),
    "dcgan": ("d_loss", "g_loss"),
    "diffusion": ("loss",),
    "progressive": ("loss", "pixel", "coarse"),
    "cond_gan": ("d_loss", "g_loss", "identity"),
    "translator": ("loss", "pixel"),
    "encoder": ("loss",),
}
DATA_STAGES = {"download", "split", "crop", "pack"}
FEATURE_STAGES = {"labels", "features", "identity", "train_encoder", "verify"}
MODEL_STAGES = {f"{stage}@{model}" for stage in ("train", "evaluate") for model in MODELS}
PIPELINE_STAGES = {*DATA_STAGES, *FEATURE_STAGES, *MODEL_STAGES, "report"}
# The committed DVC metrics files (metric name → number), each with its details beside it
# (metrics/data.json is committed too, not a DVC metric: `dvc metrics show metrics/data.json`).
METRICS_FILES = (*MODELS, "features")
JSON_SUFFIXES = (".json", ".details.json")

# The README's commands, block by block (the test below checks that these are all of them).
ACTIVATE = "source .venv/bin/activate"
BASELINE = [
    "python -m face_generation.pipeline",
    "dvc status",
    "dvc metrics show",
    "dvc metrics diff",
    "dvc metrics show metrics/data.json",
]
PLOTS = ["dvc plots show"]
EXPERIMENT = [
    "dvc exp run -S models.vae.beta=0.5",
    "dvc metrics diff",
    "dvc exp show --only-changed",
]
SWEEP = [
    "dvc exp run --queue -S 'models.vae.beta=0.25,2.5'",
    "dvc queue start",
    "dvc queue status",
    "dvc exp show --only-changed",
]
REMOTE = ["dvc push", "dvc pull"]
RAW_DATA = ["dvc push data.dvc", "dvc pull data.dvc"]
FACES = [
    f"mkdir -p incoming && cp -r {FACES_PLACEHOLDER}/. incoming/",
    "dvc add incoming",
    'git add incoming.dvc && git commit -m "Faces for training"',
    "dvc push",
]


def readme_commands() -> list[str]:
    """The commands of the bash blocks of README.md's "## DVC" section, without comments."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## DVC\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+# .*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def test_these_are_the_readme_commands() -> None:
    assert readme_commands() == [
        ACTIVATE,
        *BASELINE,
        *PLOTS,
        *EXPERIMENT,
        *SWEEP,
        *REMOTE,
        *RAW_DATA,
        *FACES,
    ]


# --- the copy and its shell -----------------------------------------------------------


@dataclass
class Shell:
    """bash in the copy, with the venv activated as the README says."""

    root: Path
    env: dict[str, str]

    def run(self, command: str) -> str:
        """Run one README command; its stdout and stderr (it must succeed)."""
        result = subprocess.run(
            ["bash", "-c", f"{ACTIVATE} && {command}"],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"`{command}` failed ({result.returncode}):\n{output}"
        return output

    def git(self, *arguments: str) -> str:
        return subprocess.run(
            ["git", *arguments],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout


def aim_tracking_at(config: Path, overrides: list[str]) -> None:
    """Replace the `key: value` lines of configs/tracking/default.yaml that `overrides`
    (tracking.key=value) name."""
    text = config.read_text()
    for override in overrides:
        key, value = override.removeprefix("tracking.").split("=", 1)
        text, count = re.subn(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.M)
        assert count == 1, key
    config.write_text(text)


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer) -> Iterator[Shell]:
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.is_file():
        pytest.skip(f"the tests do not run in a venv ({sys.prefix}): nothing to activate")
    root = tmp_path_factory.mktemp("readme") / "project"
    copy_project(root)  # configs/ stays a link to face_generation/configs
    (root / ".venv").symlink_to(Path(sys.prefix))
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env.update(
        COLUMNS=str(WIDTH),
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    copy = Shell(root, env)
    aim_tracking_at(
        root / "configs" / "tracking" / "default.yaml",
        [*mlflow_server.overrides, "tracking.experiment=test-readme"],
    )
    copy.git("init", "-q")
    params = subprocess.run(
        [sys.executable, "-m", "face_generation.config"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (root / "params.yaml").write_text(params)
    copy.git("add", "-A")
    copy.git("commit", "-qm", "the project, logging to the tests' MLflow server")
    yield copy


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"^Running stage '([^']+)'", output, flags=re.M))


def assert_fits(output: str) -> None:
    wide = [line for line in output.splitlines() if len(line) > WIDTH]
    assert not wide, f"{len(wide)} lines wider than {WIDTH} columns, e.g. {wide[0]!r}"


def committed_metrics(shell: Shell, name: str) -> dict[str, float]:
    """metrics/<name>.json as committed: metric name → number, its details committed beside."""
    path, details = f"metrics/{name}.json", f"metrics/{name}.details.json"
    for file in (path, details):
        assert shell.git("ls-files", file), f"{file} is not committed: run `make baseline`, commit"
    values = dict(json.loads(shell.git("show", f"HEAD:{path}")))
    assert all(type(value) in (int, float) for value in values.values()), (path, values)
    return values


# --- the baseline ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_pipeline_reproduces_the_committed_baseline(
    shell: Shell, mlflow_server: MlflowServer
) -> None:
    pipeline, status, show, diff, data = BASELINE
    committed = {name: committed_metrics(shell, name) for name in METRICS_FILES}
    output = shell.run(pipeline)
    assert stages_run(output) == PIPELINE_STAGES
    assert "No file hash info" not in output and "WARNING" not in output
    assert "Warning" not in output  # e.g. MLflow's about a model logged without input_example
    links = re.findall(r"http://127\.0\.0\.1:\d+/\S*", output)
    assert links and all("workflowType=machine_learning" in link for link in links), links
    assert "Use `dvc push`" in output  # DVC's hint, which works: a default remote is set
    assert "Data and pipelines are up to date." in shell.run(status)

    # Only dvc.lock (the models' hashes, other code's hashes) and the scores (with the
    # details that summarise the same samples) may differ from what is committed: no
    # data.dvc, params.yaml or other file was rewritten.
    changed = {line[3:] for line in shell.git("status", "--porcelain").splitlines()}
    scores = {f"metrics/{name}{suffix}" for name in METRICS_FILES for suffix in JSON_SUFFIXES}
    assert changed <= {"dvc.lock", *scores}, changed

    # The features stages: a folder per network, and the report's verification section.
    assert (shell.root / "data" / "features" / "32" / "effnet_lite0" / "meta.json").is_file()
    assert "## Identity verification" in (shell.root / "plots" / "report.md").read_text()

    shown = shell.run(show)
    assert_fits(shown)
    assert all(f"metrics/{name}.json" in shown for name in METRICS_FILES)
    assert "fd_effnet" in shown and "details" not in shown
    assert_fits(shell.run(diff))
    assert "images_packed" in shell.run(data)

    # Each model's MLflow run, tagged with its DVC stage; the generators' hold their evaluation.
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("test-readme")
    runs = client.search_runs([experiment.experiment_id])
    stages = {run.info.run_name: run.data.tags["dvc_stage"] for run in runs}
    assert stages == {**{model: f"train@{model}" for model in MODELS}, "encoder": "train_encoder"}
    generators = [run for run in runs if run.info.run_name in MODELS]
    assert all("eval/fd_effnet" in run.data.metrics for run in generators)
    assert all("eval/network_evaluations" in run.data.tags for run in generators)
    encoder = next(run for run in runs if run.info.run_name == "encoder")
    assert encoder.data.params["encoder.name"] == "dlib"  # which networks the run saw
    assert encoder.data.params["backbone.name"] == "effnet_lite0"

    # Scores: the same on the machine that made the baseline, close on any other.
    for name in METRICS_FILES:
        measured = json.loads((shell.root / "metrics" / f"{name}.json").read_text())
        assert measured.keys() == committed[name].keys(), name
        for metric, value in committed[name].items():
            close = pytest.approx(value, rel=TOLERANCE, abs=SHARE_STEP)
            assert measured[metric] == close, (name, metric)


@pytest.mark.slow
def test_plots_show_draws_each_loss_offline(shell: Shell) -> None:
    output = shell.run(*PLOTS)
    page = shell.root / "dvc_plots" / "index.html"
    assert page.as_uri() in output
    html = page.read_text()
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts and all((page.parent / script).resolve().is_file() for script in scripts)
    assert "cdn.jsdelivr" not in html and "https://cdn" not in html
    # One chart per loss of each family, drawing that column of its losses.csv.
    for model, columns in LOSS_COLUMNS.items():
        for column in columns:
            assert f'"{column}"' in html and f"{model} {column}" in html, (model, column)
    assert "images_per_sec" not in html
    assert "vae/real_vs_generated.png" in html  # the image grids of plots/<model>/


# --- the quick start's third command ------------------------------------------------


@pytest.mark.slow
def test_make_serve_after_the_pipeline_serves_every_generator(
    shell: Shell, browser: object
) -> None:
    """README, "Quick start": `make serve` after the pipeline (on a free port here) serves the
    generators it trained, says in one line that it skipped the face encoder, and the page lists
    them in a real browser."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    process = subprocess.Popen(
        ["bash", "-c", f"{ACTIVATE} && exec make serve SERVE_ARGS=serve.port=0"],
        cwd=shell.root,
        env=shell.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # make and the service it starts stop together
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # blocks until the service says where it is
            lines.append(line)
            if " at http://127.0.0.1:" in line or process.poll() is not None:
                break
        assert " at http://127.0.0.1:" in lines[-1], "".join(lines)
        skipped = [line for line in lines if line.startswith("[serve] skipped")]
        assert skipped == [
            "[serve] skipped encoder (models/encoder/model.pt): the encoder family makes no "
            "images (it embeds faces)\n"
        ]
        url = lines[-1].split(" at ")[1].split()[0]
        listed = httpx.get(url + "models", timeout=60)
        assert listed.status_code == 200
        assert sorted(model["name"] for model in listed.json()) == sorted(MODELS)

        driver = browser
        driver.get(url)  # type: ignore[attr-defined]
        WebDriverWait(driver, 120).until(  # type: ignore[arg-type]
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready")
        )
        choices = Select(driver.find_element(By.ID, "model")).options  # type: ignore[attr-defined]
        assert sorted(option.get_attribute("value") for option in choices) == sorted(MODELS)
        assert not driver.find_element(By.ID, "error").is_displayed()  # type: ignore[attr-defined]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


# --- experiments ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_an_experiment_reruns_training_and_compares_with_the_baseline(shell: Shell) -> None:
    run, diff, show = EXPERIMENT
    output = shell.run(run)
    assert "Ran experiment(s)" in output
    # a setting of one model reruns that model and the report, nothing else
    assert stages_run(output) == {"train@vae", "evaluate@vae", "report"}
    compared = shell.run(diff)
    assert_fits(compared)
    assert "metrics/vae.json" in compared and "fd_effnet" in compared
    shown = shell.run(show)
    assert re.search(r"\[[a-z]+-[a-z]+\].*\b0\.5\b", shown), shown  # the experiment
    baseline = [line for line in shown.splitlines() if re.match(r"\s*(master|main)\s", line)]
    assert baseline and re.search(r"\s1\s", baseline[0]), shown  # the baseline's beta: 1
    assert "Data and pipelines are up to date." in shell.run("dvc status")


def wait_for_queued_experiments(root: Path) -> None:
    """Block until every queued or running experiment has finished (DVC's own wait)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        queue = repo.experiments.celery_queue
        for entry in [*queue.iter_active(), *queue.iter_queued()]:
            queue.wait_for_start(entry)
            queue.get_result(entry)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_sweep_runs_queued_experiments(shell: Shell) -> None:
    queue, start, status, show = SWEEP
    assert len(re.findall(r"Queued experiment '[^']+' for future execution", shell.run(queue))) == 2
    assert "Started '1' new experiments task queue worker" in shell.run(start)
    wait_for_queued_experiments(shell.root)
    statuses = shell.run(status)
    assert statuses.count("Success") == 2 and "Failed" not in statuses, statuses
    shown = shell.run(show)
    for beta in ("0.25", "2.5"):
        assert re.search(rf"\[[a-z]+-[a-z]+\].*\b{re.escape(beta)}\b", shown), (beta, shown)


# --- remote storage and data you bring ------------------------------------------------


@pytest.mark.slow
def test_push_then_pull_restores_the_outputs(shell: Shell) -> None:
    push, pull = REMOTE
    assert re.search(r"\d+ files? pushed", shell.run(push))
    assert (shell.root.parent / "face_generation-dvc-storage").is_dir()
    for folder in ("models", "data"):  # what a fresh clone lacks
        shutil.rmtree(shell.root / folder)
    pulled = shell.run(pull)
    assert re.search(r"\d+ files? (fetched|added)", pulled), pulled
    assert (shell.root / "models" / "vae" / "model.pt").is_file()
    assert "Data and pipelines are up to date." in shell.run("dvc status")


@pytest.mark.slow
def test_a_clone_beside_the_remote_pulls_the_raw_data_instead_of_fetching_it(shell: Shell) -> None:
    """README, "The raw data": data.dvc tracks data/sources/ (what the pipeline fetched), and
    a clone beside the remote gets the same bytes back with `dvc pull data.dvc`."""
    push, pull = RAW_DATA
    assert "data.dvc" in shell.git("ls-files", "data.dvc")
    shell.run(push)
    clone = Shell(shell.root.parent / "clone", shell.env)
    subprocess.run(["git", "clone", "-q", str(shell.root), str(clone.root)], check=True)
    (clone.root / ".venv").symlink_to(Path(sys.prefix))
    assert not (clone.root / "data").exists()
    assert re.search(r"\d+ files? (fetched|added)", clone.run(pull))
    fetched = sorted((shell.root / "data" / "sources").rglob("*.png"))
    pulled = sorted((clone.root / "data" / "sources").rglob("*.png"))
    assert len(pulled) == 100 and [p.relative_to(clone.root) for p in pulled] == [
        p.relative_to(shell.root) for p in fetched
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(fetched, pulled, strict=True))
    assert "Data and pipelines are up to date." in clone.run("dvc status data.dvc")


def test_pull_in_a_fresh_clone_of_the_committed_tree_names_what_no_remote_holds(
    tmp_path: Path,
) -> None:
    """README, "Remote storage": on a fresh clone of the committed tree the default remote is
    empty, so `dvc pull` exits 1 naming the outputs of dvc.lock; `--allow-missing` exits 0."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.is_file():
        pytest.skip(f"the tests do not run in a venv ({sys.prefix}): nothing to activate")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True)
    (clone / ".venv").symlink_to(Path(sys.prefix))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", f"{ACTIVATE} && {command}"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
        )

    pull = run(REMOTE[1])
    assert pull.returncode == 1, pull.stdout + pull.stderr
    output = pull.stdout + pull.stderr
    assert "do not exist neither locally nor on remote" in output
    assert {"models/dcgan/model.pt", "data/packed/32", "data/sources"} <= set(output.split())
    assert run(f"{REMOTE[1]} --allow-missing").returncode == 0
    assert not (clone / "models" / "dcgan" / "model.pt").exists()  # `make run` builds it


@pytest.mark.slow
def test_faces_you_bring_are_versioned_with_dvc_add(shell: Shell, tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    faces.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for index, image in enumerate(noise):
        Image.fromarray(image).save(faces / f"face{index}.png")
    copy, add, commit, push = FACES
    shell.run(copy.replace(FACES_PLACEHOLDER, str(faces)))
    shell.run(add)
    shell.run(commit)
    assert "incoming.dvc" in shell.git("show", "--name-only", "HEAD").split()
    assert shell.git("status", "--porcelain", "incoming") == ""  # git ignores the images
    assert re.search(r"\d+ files? pushed", shell.run(push))  # the images and their listing
