"""Mutation testing of the modules that carry the project's guarantees: `make mutate`.

For each module below, cosmic-ray makes every small change its operators know (a `<` that
becomes `<=`, a number that becomes another, a removed call...) and runs the module's fast
tests against each mutant: a mutant the tests do not fail on "survives", and is either a gap
in the tests or a change that does not alter behaviour (an equivalent mutant).

It works on a temporary copy of the committed tree, so the working tree is never modified,
prints a table of killed/total per module and the surviving mutants, and writes
benchmarks/results/mutation.json. Too slow for CI (minutes per module on 2 cores); scores are
recorded with their date in docs/mutation.md.

Usage: python scripts/mutate.py [--only MODULE ...] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results" / "mutation.json"


@dataclass(frozen=True)
class Target:
    module: str  # the file mutated
    tests: str  # pytest arguments: the fast tests that guard it


TARGETS = (
    Target("face_generation/training/ema.py", "tests/test_batches_and_ema.py"),
    Target("face_generation/training/data.py", "tests/test_batches_and_ema.py tests/test_training.py -k batch"),
    Target("face_generation/training/checkpoint.py",
           "tests/test_training.py -k 'resumed_run or writes_checkpoints or truncated'"),
    Target("face_generation/runtime/checkpoint.py",
           "tests/test_training.py -k 'truncated or another_model' tests/test_checkpoint_safety.py"),
    Target("face_generation/tracking/spool.py", "tests/test_spool.py"),
    Target("face_generation/evaluation/frechet.py", "tests/test_metrics.py -k 'frechet or fd'"),
    Target("face_generation/evaluation/kid.py", "tests/test_metrics.py -k kid"),
    Target("face_generation/evaluation/precision_recall.py", "tests/test_metrics.py -k precision"),
)  # fmt: skip


def copy_tree(destination: Path) -> None:
    """The committed tree (HEAD), without the working tree's uncommitted changes."""
    archive = subprocess.run(
        ["git", "archive", "HEAD"], cwd=REPO_ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)


def run_target(target: Target, tree: Path, timeout: float) -> dict:
    """Mutate one module in `tree`; killed, survived and total counts and the survivors."""
    python = sys.executable
    session = tree / "mutation.sqlite"
    config = tree / "mutation.toml"
    test_command = f"{python} -m pytest -x -q -p no:cacheprovider --no-header {target.tests}"
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{target.module}"\n'
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command)}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    session.unlink(missing_ok=True)
    cosmic = [python, "-m", "cosmic_ray.cli"]
    subprocess.run([*cosmic, "init", str(config), str(session)], cwd=tree, check=True)
    started = time.perf_counter()
    subprocess.run([*cosmic, "exec", str(config), str(session)], cwd=tree, check=True)
    dump = subprocess.run(
        [*cosmic, "dump", str(session)], cwd=tree, capture_output=True, text=True, check=True
    )
    killed, survivors, total = 0, [], 0
    for line in dump.stdout.splitlines():
        work_item, result = json.loads(line)
        if result is None:
            continue
        total += 1
        if result["test_outcome"] == "survived":
            mutation = work_item["mutations"][0]
            survivors.append(
                f"{mutation['module_path']}:{mutation['start_pos'][0]} "
                f"{mutation['operator_name']} #{mutation['occurrence']}"
            )
        else:
            killed += 1
    return {
        "module": target.module,
        "tests": target.tests,
        "killed": killed,
        "total": total,
        "score": killed / total if total else None,
        "seconds": round(time.perf_counter() - started),
        "survivors": survivors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", nargs="+", metavar="MODULE", help="mutate only these module paths"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant's tests")
    args = parser.parse_args()
    targets = [t for t in TARGETS if not args.only or t.module in args.only]
    results = []
    with tempfile.TemporaryDirectory(prefix="face-generation-mutate-") as temporary:
        tree = Path(temporary)
        copy_tree(tree)
        for target in targets:
            print(f"[mutate] {target.module} against {target.tests}", flush=True)
            results.append(run_target(target, tree, args.timeout))
    print(f"\n{'module':<48} {'killed':>7} {'total':>6} {'score':>6}")
    for result in results:
        score = f"{result['score']:.0%}" if result["score"] is not None else "—"
        print(f"{result['module']:<48} {result['killed']:>7} {result['total']:>6} {score:>6}")
    for result in results:
        for survivor in result["survivors"]:
            print(f"  survived: {survivor}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results}, indent=2)
    )
    print(f"\n[mutate] {RESULTS}")


if __name__ == "__main__":
    main()
