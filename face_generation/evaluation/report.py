"""The comparison users read first: `python -m face_generation.evaluation.report`.

Examples:
  python -m face_generation.evaluation.report --params params.yaml   (as `dvc repro` runs it)
  python -m face_generation.evaluation.report                        (every evaluated model)

Reads the evaluation of every model (those under `models` in params.yaml, else every model
with a metrics/<model>.details.json): metrics/<model>.json and its details. Writes
plots/report.md: one table with a row per metric and a column per model, plus the metric's
feature network, N and data hash; a metric that could not be computed says why in a
footnote, never as a number; then the face encoders' identity verification
(metrics/features.json and its details). Also plots/report.png, one bar chart per metric.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from face_generation.config import config_from_args, stage_parser
from face_generation.evaluation.record import DETAILS_SUFFIX, read_record
from face_generation.evaluation.verification_report import verification_markdown

# Direction of each metric, by name prefix (the first that matches).
LOWER_IS_BETTER = ("fd_", "kid_", "fid_", "lpips", "identity_distance", "feature_fidelity")
HIGHER_IS_BETTER = (
    "precision_", "recall_", "ssim", "psnr", "identity_cosine", "identity_same",
    "zero_shot_identity", "zero_shot_same", "same_person",
)  # fmt: skip
NOT_COMPUTED = "—"
# Generated identity cosines: each shown beside its judge's real-pair anchors (`anchors`).
ANCHORED = ("identity_cosine", "zero_shot_identity_cosine", "zero_shot_random_cosine")
PLOTS = (  # plots/<model>/ files the report shows, as evaluation/plots.py names them
    ("real_vs_generated.png", "real vs generated"),
    ("nearest_train.png", "nearest training images"),
    ("reconstructions.png", "reconstructions"),
)

Records = dict[str, dict[str, Any] | None]  # model -> its evaluation record (None: not evaluated)


def direction(metric: str) -> str:
    if metric.startswith(LOWER_IS_BETTER):
        return "↓"
    if metric.startswith(HIGHER_IS_BETTER):
        return "↑"
    return ""


def model_names(cfg: DictConfig, metrics_dir: Path) -> list[str]:
    """The models under `models` (params.yaml), else those with an evaluation in metrics/."""
    if cfg.get("models"):
        return [str(name) for name in cfg.models]
    names = [
        path.name.removesuffix(DETAILS_SUFFIX)
        for path in sorted(metrics_dir.glob(f"*{DETAILS_SUFFIX}"))
    ]
    # features.details.json is the verify stage's, not a model's evaluation
    return [name for name in names if is_evaluation(metrics_dir / f"{name}{DETAILS_SUFFIX}", name)]


def is_evaluation(details: Path, name: str) -> bool:
    """Whether `details` is the evaluation record of model `name`."""
    record = json.loads(details.read_text())
    return isinstance(record, dict) and record.get("model") == name and "metrics" in record


def load_records(metrics_dir: Path, names: Sequence[str]) -> Records:
    return {name: read_record(metrics_dir, name) for name in names}


def format_value(value: float) -> str:
    return f"{value:.4g}"


def anchors(calibration: dict[str, Any]) -> str:
    """Where an identity cosine sits: the mean cosine of same-person and of different-person
    real pairs of the eval split at the model's resolution, by the same judge."""
    if calibration.get("same_cosine") is None:
        return "real pairs unknown"
    same, different = calibration["same_cosine"], calibration["different_cosine"]
    return f"real pairs: same {format_value(same)}, different {format_value(different)}"


def cell(metric: str, entry: dict[str, Any]) -> str:
    """A measured entry's table cell: its value (with the anchors of an identity cosine), or
    its note where it has no value."""
    value = entry.get("value")
    if value is None:
        return str(entry.get("note", "?"))
    if metric in ANCHORED and "calibration" in entry:
        return f"{format_value(value)} ({anchors(entry['calibration'])})"
    return format_value(value)


def counts(entry: dict[str, Any]) -> str:
    if "n_generated" in entry:
        return f"{entry['n_generated']} generated / {entry['n_real']} real"
    return f"{entry['n']} pairs" if "n" in entry else ""


def sampling(record: dict[str, Any]) -> str:
    """The sampling options the scores were drawn with and the network passes per sample."""
    options = record.get("sampling") or {}
    shown = ", ".join(f"{name}={value}" for name, value in options.items()) or "defaults"
    evaluations = record.get("network_evaluations")
    return f"{shown} ({evaluations})" if evaluations is not None else shown


def joined(values: dict[str, str]) -> str:
    """One value when every model agrees, else `model: value` for each."""
    distinct = {value for value in values.values() if value}
    if len(distinct) <= 1:
        return next(iter(distinct), "")
    return "; ".join(f"{model}: {value}" for model, value in values.items() if value)


def metric_names(records: Records) -> list[str]:
    """Every metric of any model, in the order the evaluation writes them."""
    names: list[str] = []
    for record in records.values():
        for metric in (record or {}).get("metrics", {}):
            if metric not in names:
                names.append(metric)
    return names


def smoke_scale(record: dict[str, Any], below: int) -> bool:
    """Scored on fewer generated samples than `below`: numbers that show the machinery only."""
    return int(record.get("n_generated", 0)) < below


def report_markdown(records: Records, plots_dir: Path | None = None, smoke_below: int = 0) -> str:
    """The report: models, then one row per metric and one column per model, then footnotes;
    models scored on fewer than `smoke_below` samples are labelled smoke-scale."""
    evaluated = {name: record for name, record in records.items() if record is not None}
    models = list(records)
    lines = [
        "# Model comparison",
        "",
        "Written by `python -m face_generation.evaluation.report` from `metrics/<model>.json` and "
        "`metrics/<model>.details.json` "
        "(the `report` stage of `dvc repro`). ↓: lower is better, ↑: higher is better; "
        f"{NOT_COMPUTED}: not computed for that model (reconstruction metrics need a model that "
        "reconstructs). Fréchet distances are named after their feature network: only "
        "`fid_inception` is the standard FID.",
        "",
    ]
    missing = [name for name, record in records.items() if record is None]
    if missing:
        lines += [
            "Not evaluated yet (no metrics file): "
            + ", ".join(f"`{name}` (`dvc repro evaluate@{name}`)" for name in missing),
            "",
        ]
    hashes = {str(record["data_hash"]) for record in evaluated.values()}
    if len(hashes) > 1:
        lines += [
            "**Warning:** the models were scored on different packed data ("
            + ", ".join(f"{name}: {record['data_hash']}" for name, record in evaluated.items())
            + "); their numbers are not comparable.",
            "",
        ]
    if evaluated:
        lines += [
            "| model | step | resolution | samples scored | sampling (network evaluations) "
            "| split (size) | checkpoint |",
            "| --- | ---: | ---: | ---: | --- | --- | --- |",
        ]
        for name, record in evaluated.items():
            lines.append(
                f"| {name} | {record['step']} | {record['resolution']} "
                f"| {record['n_generated']} | {sampling(record)} "
                f"| {record['split']} ({record['split_size']}) | `{record['checkpoint']}` |"
            )
        lines += ["", f"Rule: {next(iter(evaluated.values()))['sample_rule']}.", ""]
        smoke = [name for name, record in evaluated.items() if smoke_scale(record, smoke_below)]
        if smoke:
            lines += [
                f"**Smoke-scale:** {', '.join(smoke)} scored on fewer than {smoke_below} "
                "generated samples (`eval.report.smoke_scale_below`): their numbers, the "
                "zero-shot identity and the guidance sweep included, show the machinery "
                "working, not model quality.",
                "",
            ]

    reasons: list[str] = []
    header = ["metric", *models, "network", "N", "data hash"]
    lines += [
        "| " + " | ".join(header) + " |",
        "| --- | " + " | ".join("---:" for _ in models) + " | --- | --- | --- |",
    ]
    for metric in metric_names(records):
        cells, networks, ns, data = [], {}, {}, {}
        for name in models:
            entry = ((records[name] or {}).get("metrics") or {}).get(metric)
            if entry is None:
                cells.append(NOT_COMPUTED)
                continue
            networks[name] = str(entry.get("network", ""))
            data[name] = str(entry.get("data_hash", ""))
            if not entry.get("available", True):
                if entry["reason"] not in reasons:
                    reasons.append(entry["reason"])
                cells.append(f"unavailable [{reasons.index(entry['reason']) + 1}]")
                continue
            ns[name] = counts(entry)
            cells.append(cell(metric, entry))
        label = f"{metric} {direction(metric)}".strip()
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {joined(networks)} | {joined(ns)} "
            f"| {joined(data)} |"
        )
    if any(metric in ANCHORED for metric in metric_names(records)):
        lines += [
            "",
            "Identity cosines stand beside their real-pair anchors: the mean cosine of "
            "same-person and of different-person pairs of real eval-split faces at the model's "
            "resolution, by the same judge. Same-person shares are counted at that judge's "
            'threshold calibrated on those pairs at `eval.identity.far`; "uncalibrated" where '
            "the eval split's people are unknown.",
        ]
    if reasons:
        lines += ["", "Unavailable metrics:", ""]
        lines += [f"{index}. {reason}" for index, reason in enumerate(reasons, 1)]
    if evaluated:
        lines += [
            "",
            "Nearest training image (mean distance in the backbone's feature space; samples "
            "much closer to the training set than held-out test images are copies):",
            "",
            "| model | generated → train | test → train | training images searched |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, record in evaluated.items():
            near = record["nearest_train"]
            lines.append(
                f"| {name} | {format_value(near['mean_distance_generated'])} "
                f"| {format_value(near['mean_distance_test'])} | {near['train_images_searched']} |"
            )
    lines += guidance_tables(evaluated, smoke_below)
    if plots_dir is not None:
        lines += plot_links(evaluated, plots_dir)
    return "\n".join(lines) + "\n"


def guidance_tables(evaluated: dict[str, dict[str, Any]], smoke_below: int = 0) -> list[str]:
    """Per conditional model with a guidance sweep: one row per guidance scale."""
    lines: list[str] = []
    for name, record in evaluated.items():
        sweep = record.get("guidance_sweep") or []
        if not sweep:
            continue
        columns = list(sweep[0])
        scale = ", smoke-scale" if smoke_scale(record, smoke_below) else ""
        zero_shot = record.get("metrics", {}).get("zero_shot_identity_cosine", {})
        anchored = f", {anchors(zero_shot['calibration'])}" if "calibration" in zero_shot else ""
        lines += [
            "",
            f"Guidance sweep of {name} (conditioned on `{record.get('condition')}`; identity "
            f"judged on the references of the zero-shot metric{anchored}; "
            f"{record['n_generated']} samples{scale}):",
            "",
            "| " + " | ".join(f"{c} {direction(c)}".strip() for c in columns) + " |",
            "| " + " | ".join("---:" for _ in columns) + " |",
        ]
        lines += ["| " + " | ".join(format_value(row[c]) for c in columns) + " |" for row in sweep]
    return lines


def plot_links(evaluated: dict[str, dict[str, Any]], plots_dir: Path) -> list[str]:
    """Markdown images of the chart and each model's grids, relative to plots/report.md."""
    lines = ["", "## Plots", ""]
    if (plots_dir / "report.png").is_file():
        lines += ["![every metric, per model](report.png)", ""]
    for name in evaluated:
        images = [
            f"![{name}: {title}]({name}/{file})"
            for file, title in PLOTS
            if (plots_dir / name / file).is_file()
        ]
        if images:
            lines += [f"### {name}", ""]
            for image in images:
                lines += [image, ""]
    return lines


def comparison_plot(records: Records, path: Path, settings: DictConfig) -> Path | None:
    """One bar chart per metric that has a value for some model; None when none has.

    `settings`: eval.report (panels per row, panel size in inches, dpi).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    models = [name for name, record in records.items() if record is not None]

    def value(model: str, metric: str) -> float | None:
        entry = ((records[model] or {}).get("metrics") or {}).get(metric) or {}
        return entry.get("value")

    metrics = [
        metric
        for metric in metric_names(records)
        if any(value(name, metric) is not None for name in models)
    ]
    if not metrics:
        return None
    columns = min(int(settings.chart_columns), len(metrics))
    rows = -(-len(metrics) // columns)
    width, height = (float(size) for size in settings.chart_panel_inches)
    figure, axes = plt.subplots(
        rows, columns, figsize=(width * columns, height * rows), squeeze=False, layout="constrained"
    )
    for axis in axes.flat[len(metrics) :]:
        axis.set_visible(False)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        shown = [(name, value(name, metric)) for name in models]
        bars = axis.bar(
            [name for name, number in shown if number is not None],
            [number for _, number in shown if number is not None],
            color="tab:blue",
        )
        axis.bar_label(bars, fmt="%.3g", fontsize=7)
        axis.set_title(f"{metric} {direction(metric)}".strip(), fontsize=9)
        axis.tick_params(labelsize=8)
        axis.margins(y=0.2)  # room for the value labels
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    figure.savefig(temporary, format="png", dpi=int(settings.dpi))
    plt.close(figure)
    os.replace(temporary, path)
    return path


def write_report(cfg: DictConfig) -> tuple[Path, Path | None]:
    """plots/report.md and plots/report.png from the metrics files of every model."""
    metrics_dir, plots_dir = Path(cfg.paths.metrics), Path(cfg.paths.plots)
    records = load_records(metrics_dir, model_names(cfg, metrics_dir))
    if not any(records.values()):
        raise FileNotFoundError(
            f"no evaluation in {metrics_dir}/ for {sorted(records) or 'any model'}: run "
            "`python -m face_generation.evaluate model=NAME` (or `dvc repro`) first"
        )
    chart = comparison_plot(records, plots_dir / "report.png", cfg.eval.report)
    markdown = plots_dir / "report.md"
    temporary = markdown.with_name(markdown.name + ".tmp")
    # The face encoders' identity verification (the verify stage), after the models' table.
    smoke_below = int(cfg.eval.report.smoke_scale_below)
    report = report_markdown(records, plots_dir, smoke_below) + verification_markdown(metrics_dir)
    temporary.write_text(report)
    os.replace(temporary, markdown)
    return markdown, chart


def main(argv: Sequence[str] | None = None) -> None:
    args = stage_parser(__doc__ or "").parse_args(argv)
    try:
        markdown, chart = write_report(config_from_args(args))
    except FileNotFoundError as error:
        raise SystemExit(f"[report] error: {error}") from None
    print(f"[report] {markdown}" + (f" and {chart}" if chart else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
