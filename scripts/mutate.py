"""Mutation testing of the modules that carry the project's guarantees: `make mutate`.

For each module below, cosmic-ray makes every small change its operators know (a `<` that
becomes `<=`, a number that becomes another, a removed `break`...) and runs the module's fast
tests against each mutant: a mutant the tests do not fail on "survives", and is either a gap
in the tests or a change that does not alter behaviour (an equivalent mutant).

It works on a temporary copy of the committed tree (HEAD: commit new tests first), never on the
working tree. Each module's tests first run once unmutated (they must pass; their time sets
the per-mutant timeout). It prints killed/total per module and every surviving mutant, and
writes benchmarks/results/mutation.json (one entry per module, kept across runs of single
modules). Too slow for CI (minutes to an hour per module on 2 cores); the scores are recorded
with their date in docs/mutation.md.

Usage: python scripts/mutate.py [--only MODULE ...] [--budget-minutes N]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "mutation.json"
# -x: the first failing test kills the mutant. Without conftest.py (where the tests allow it),
# the hydra plugin and the cache, a test run starts in about a second instead of torch's and
# MLflow's import time: that is most of the cost of a mutant.
PYTEST = "-m pytest -x -q --no-header -p no:cacheprovider -p no:hydra_pytest"


@dataclass(frozen=True)
class Target:
    module: str  # the file mutated
    tests: str  # pytest arguments: the fast tests that guard it


TARGETS = (
    Target(
        "face_generation/runtime/checkpoint.py",
        "--noconftest tests/test_checkpoint_safety.py tests/test_checkpoint_files.py",
    ),
    Target("face_generation/training/ema.py", "--noconftest tests/test_batches_and_ema.py"),
    Target("face_generation/training/data.py", "--noconftest tests/test_batches_and_ema.py"),
    Target("face_generation/tracking/spool.py", "--noconftest -m 'not slow' tests/test_spool.py"),
    # Delivery and sync against the in-process MLflow stand-in (tests/mlflow_standin.py); the
    # slow outage-at-every-request tests are run by hand on the survivors (docs/mutation.md).
    Target("face_generation/tracking/delivery.py", "--noconftest -m 'not slow' tests/test_delivery.py"),
    Target("face_generation/tracking/sync.py", "--noconftest tests/test_sync.py"),
    # The metrics' maths (a few seconds a file), without test_metrics.py's feature networks.
    Target("face_generation/evaluation/frechet.py", "--noconftest tests/test_metric_maths.py"),
    Target("face_generation/evaluation/kid.py", "--noconftest tests/test_metric_maths.py"),
    Target("face_generation/evaluation/precision_recall.py", "--noconftest tests/test_metric_maths.py"),
    # The verification metric and its stage on feature folders written in a temporary folder.
    Target("face_generation/evaluation/verification_scores.py",
           "--noconftest tests/test_evaluation_maths.py"),
    Target("face_generation/evaluation/verification.py",
           "--noconftest tests/test_evaluation_maths.py"),
    # The metric objects and their shared inputs: untrained real generators, dlib, 8 faces.
    Target("face_generation/evaluation/metrics.py", "--noconftest tests/test_evaluation_metrics.py"),
    Target("face_generation/evaluation/inputs.py", "--noconftest tests/test_evaluation_inputs.py"),
    # The schedule, the loss and the samplers against closed forms, on a UNet of a few weights.
    Target("face_generation/families/diffusion.py", "--noconftest tests/test_diffusion_maths.py"),
)  # fmt: skip


def copy_tree(destination: Path) -> None:
    """The committed tree (HEAD), without the working tree's uncommitted changes, as a git
    repository of one commit (the tracking tests read the commit a run was logged from)."""
    archive = subprocess.run(
        ["git", "archive", "HEAD"], cwd=REPO_ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
    git = ["git", "-C", str(destination), "-c", "user.name=mutate", "-c", "user.email=mutate@"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "HEAD, for mutation testing"], check=True)


def annotation_spans(module: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) (line, column) of every type annotation in `module`. Under `from __future__
    import annotations` they are never evaluated: a mutant there (`str | None` → `str & None`)
    cannot fail a test, so it is skipped rather than reported as a survivor."""
    spans = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.arg | ast.AnnAssign):
            annotation = node.annotation
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotation = node.returns
        else:
            continue
        if annotation is not None and annotation.end_lineno is not None:
            start = (annotation.lineno, annotation.col_offset)
            spans.append((start, (annotation.end_lineno, annotation.end_col_offset or 0)))
    return spans


def skip_annotation_mutants(session: Path, module: Path) -> None:
    """Mark the mutants inside type annotations as skipped in the cosmic-ray session."""
    from cosmic_ray.work_db import use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = annotation_spans(module)
    skipped = WorkResult(worker_outcome=WorkerOutcome.SKIPPED)
    with use_db(str(session)) as database:
        for item in database.pending_work_items:
            position = tuple(item.mutations[0].start_pos)
            if any(start <= position < end for start, end in spans):
                database.set_result(item.job_id, skipped)


def baseline_seconds(test_command: str, tree: Path, environment: dict[str, str]) -> float:
    """Run the tests on the unmutated copy; they must pass, or every mutant would be 'killed'."""
    started = time.perf_counter()
    result = subprocess.run(
        shlex.split(test_command), cwd=tree, env=environment, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"[mutate] the tests fail without any mutation:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - started


def execute(command: list[str], tree: Path, environment: dict[str, str], budget_s: float) -> None:
    """Run `cosmic-ray exec`; past `budget_s` interrupt it (the mutant under test is put back,
    the finished results are kept)."""
    process = subprocess.Popen(command, cwd=tree, env=environment)
    try:
        process.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        process.wait()
    finally:
        if process.returncode is None:  # this script was interrupted: stop cosmic-ray too
            process.kill()


def outcomes(dump: str) -> tuple[int, int, int, int, list[str]]:
    """Killed, tested, skipped and untested counts from `cosmic-ray dump`, and one line per
    survivor."""
    killed, tested, skipped, untested, survivors = 0, 0, 0, 0, []
    for line in dump.splitlines():
        work_item, result = json.loads(line)
        if result is None:  # not reached (the budget ran out, or the run was interrupted)
            untested += 1
            continue
        if result["worker_outcome"] == "skipped":
            skipped += 1
            continue
        tested += 1
        if result["test_outcome"] == "killed":
            killed += 1
        elif result["test_outcome"] == "survived":
            mutation = work_item["mutations"][0]
            changed = [
                text[1:].strip()
                for text in (result["diff"] or "").splitlines()
                if text[:1] in "-+" and text[:3] not in ("---", "+++")
            ]
            survivors.append(
                f"{mutation['module_path']}:{mutation['start_pos'][0]} "
                f"{mutation['operator_name']} #{mutation['occurrence']}: " + " → ".join(changed)
            )
        # "incompetent" (the test command could not start) counts as neither
    return killed, tested, skipped, untested, survivors


def run_target(target: Target, tree: Path, budget_s: float) -> dict[str, Any]:
    """Mutate one module in `tree`: killed, tested and total counts, and the survivors."""
    python = sys.executable
    environment = {**os.environ, "PYTHONPATH": str(tree)}  # subprocesses import the mutants too
    test_command = f"{python} {PYTEST} {target.tests}"
    baseline = baseline_seconds(test_command, tree, environment)
    timeout = max(30.0, 5 * baseline)  # a mutant stuck in a loop is killed by the timeout
    session = tree / "mutation.sqlite"
    config = tree / "mutation.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{target.module}"\n'
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command)}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    session.unlink(missing_ok=True)
    cosmic = [python, "-m", "cosmic_ray.cli"]
    subprocess.run([*cosmic, "init", str(config), str(session)], cwd=tree, check=True)
    skip_annotation_mutants(session, tree / target.module)
    started = time.perf_counter()
    execute([*cosmic, "exec", str(config), str(session)], tree, environment, budget_s)
    seconds = time.perf_counter() - started
    dump = subprocess.run(
        [*cosmic, "dump", str(session)], cwd=tree, capture_output=True, text=True, check=True
    ).stdout
    killed, tested, skipped, untested, survivors = outcomes(dump)
    return {
        "module": target.module,
        "tests": target.tests,
        "date": time.strftime("%Y-%m-%d"),
        "killed": killed,
        "tested": tested,
        "total": len(dump.splitlines()) - skipped,
        "skipped_in_annotations": skipped,
        "complete": untested == 0,
        "score": round(killed / tested, 3) if tested else None,
        "baseline_s": round(baseline, 1),
        "seconds_per_mutant": round(seconds / tested, 1) if tested else None,
        "survivors": survivors,
    }


def report(results: list[dict[str, Any]]) -> None:
    print(f"\n{'module':<48} {'killed':>7} {'tested':>7} {'total':>6} {'score':>6} {'s/mutant':>9}")
    for result in results:
        score = f"{result['score']:.0%}" if result["score"] is not None else "-"
        print(
            f"{result['module']:<48} {result['killed']:>7} {result['tested']:>7} "
            f"{result['total']:>6} {score:>6} {result['seconds_per_mutant'] or '-':>9}"
            + ("" if result["complete"] else "  (partial: the budget ran out)")
        )
    for result in results:
        for survivor in result["survivors"]:
            print(f"  survived: {survivor}")


def save(results: list[dict[str, Any]]) -> None:
    """Add these modules' results to mutation.json, keeping those of the modules not run now."""
    earlier = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    modules = {**earlier.get("modules", {}), **{r["module"]: r for r in results}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"modules": modules}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    known = [target.module for target in TARGETS]
    parser.add_argument(
        "--only", nargs="+", metavar="MODULE", choices=known, help="mutate only these modules"
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=120.0,
        help="stop a module's mutants after this long and report the ones tested (default 120)",
    )
    args = parser.parse_args()
    targets = [target for target in TARGETS if not args.only or target.module in args.only]
    results = []
    with tempfile.TemporaryDirectory(prefix="face-generation-mutate-") as temporary:
        tree = Path(temporary)
        copy_tree(tree)
        for target in targets:
            print(f"[mutate] {target.module} against {target.tests}", flush=True)
            results.append(run_target(target, tree, 60 * args.budget_minutes))
            save(results)  # after each module: an interrupted run keeps what it finished
    report(results)
    print(f"\n[mutate] {RESULTS}")


if __name__ == "__main__":
    main()
