"""Loading the Hydra config tree in `configs/` (face_generation/configs/, shipped in the wheel):
the single source of truth for parameters.

Every stage is `python -m face_generation.<module>` and takes its config one of two ways:
  * Hydra overrides, composed from `configs/config.yaml`: `... data=folder data.path=faces`;
  * `--params params.yaml`, the composed `configs/pipeline.yaml` that DVC tracks, plus
    optional overrides on top (dotted keys only).
Either way the config is checked against the typed schemas of config_schema.py: a wrong type or
an unknown key is a UserError naming the key, before the stage does anything. Where the MLflow
server is (tracking.host, port, uri) comes from params.yaml for every command, else from
MLFLOW_TRACKING_URI (`tracking_source`); the command line's overrides win. `--cfg job`
prints the config a stage would run with and exits, as Hydra's own command line does; sweeps
(Hydra's `-m`) are DVC experiments (SWEEPS).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from face_generation.config_schema import schema_of, store_schemas
from face_generation.errors import UserError, reported_errors

# The config tree ships inside the package, so an installed wheel composes too; `configs/` at
# the repository root is a link to it, for DVC (.dvc/config) and the README.
CONFIG_DIR = Path(os.environ.get("FACE_GENERATION_CONFIGS") or Path(__file__).with_name("configs"))
PARAMS_FILE = Path("params.yaml")  # the pipeline's composed config, in the project root
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
SERVER_KEYS = ("host", "port", "uri")  # where the MLflow server is: one source for every command
SWEEPS = (
    "sweeps run as DVC experiments, one per combination: "
    "dvc exp run --queue -S 'train.steps=1000,2000', then dvc queue start (dvc exp show compares them)"
)


def tracking_source(params: Path = PARAMS_FILE) -> tuple[list[str], str | None]:
    """Where every command finds the MLflow server, as Hydra overrides to put before the
    command line's own (which win), and what they came from: params.yaml's tracking.host,
    port and uri (what the pipeline runs with, e.g. after `make run RUN_ARGS=tracking.port=5101`)
    when it exists, else MLFLOW_TRACKING_URI from the environment; ([], None) when neither."""
    if params.is_file():
        loaded = OmegaConf.load(params)
        tracking = loaded.get("tracking") if isinstance(loaded, DictConfig) else None
        if isinstance(tracking, DictConfig):
            values = {key: tracking.get(key) for key in SERVER_KEYS if key in tracking}
            overrides = [f"tracking.{key}={_override_value(v)}" for key, v in values.items()]
            return overrides, str(params)
    if uri := os.environ.get(TRACKING_URI_VARIABLE):
        return [f"tracking.uri={_override_value(uri)}"], TRACKING_URI_VARIABLE
    return [], None


def _override_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back: null, a number, or a quoted string."""
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def compose(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides, as Hydra's CLI would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    store_schemas()
    with initialize_config_dir(config_dir=str(CONFIG_DIR.resolve()), version_base=None):
        try:
            for override in OverridesParser.create().parse_overrides(list(overrides)):
                if override.is_sweep_override():
                    raise UserError(f"{override.input_line} is a sweep: {SWEEPS}")
            # checked again: `+train.stepz=1` adds a key that no schema has
            return checked(hydra_compose(config_name=config_name, overrides=list(overrides)))
        except (HydraException, OmegaConfBaseException) as error:
            raise UserError(config_error(error)) from None


def checked(cfg: DictConfig) -> DictConfig:
    """`cfg` merged into the schema of each of its groups, interpolations resolved once to
    check their types too; the root is closed to new keys, as Hydra closes it. Raises
    OmegaConf's errors. Merged as plain values: a key that `+train.stepz=1` added is refused."""
    skeleton = {str(key): _skeleton(str(key), node) for key, node in cfg.items()}
    typed = OmegaConf.merge(OmegaConf.create(skeleton), OmegaConf.to_container(cfg))
    OmegaConf.to_container(typed, resolve=True)  # `seed=abc` fails in train.seed: ${seed}
    OmegaConf.set_struct(typed, True)
    assert isinstance(typed, DictConfig)
    return typed


def _skeleton(key: str, node: Any) -> Any:
    """The typed nodes of a top-level key: a group's schema; in the pipeline config, one model
    config per family (`models`) and a model with its loop settings per feature model
    (`feature_models`)."""
    if key == "models":
        return {name: _schema_node("model", model) for name, model in node.items()}
    if key == "feature_models":
        return {
            name: {
                part: _schema_node(part, entry[part])
                for part in ("model", "train")
                if part in entry
            }
            for name, entry in node.items()
        }
    return _schema_node(key, node)


def _schema_node(group: str, node: Any) -> DictConfig | None:
    """An empty typed node of the group's schema; None where there is none (untyped)."""
    schema = schema_of(group, node) if isinstance(node, DictConfig) else None
    return OmegaConf.structured(schema) if schema is not None else None


def config_error(error: Exception) -> str:
    """One line for a config error: the key and what is wrong with it."""
    from hydra.errors import MissingConfigException

    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    key = getattr(cause, "full_key", None)
    if isinstance(cause, OmegaConfBaseException) and key:
        if isinstance(cause, ConfigAttributeError | ConfigKeyError) and cause.parent_node:
            known = [str(name) for name in cause.parent_node]
            parent = key.rpartition(".")[0]
            close = difflib.get_close_matches(str(cause.key), known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
            return f"{key} is not a setting{f' of {parent}' if parent else ''} ({hint})"
        return f"{key}: {str(cause.msg).splitlines()[0]}"
    first_line = str(error).strip().splitlines()[0]
    if isinstance(error, MissingConfigException) and error.options:
        return f"{first_line}; the options are {', '.join(error.options)}"
    return first_line


def load_params(
    path: str | Path, overrides: Sequence[str] = (), model: str | None = None
) -> DictConfig:
    """Read a composed config (params.yaml), checked as composition checks it; with `model`,
    its `models.<model>` becomes `model`; then dotted `key=value` overrides, checked too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"params file {path} does not exist; write it with `make params` "
            "(python -m face_generation.config > params.yaml)"
        )
    loaded = OmegaConf.load(path)
    assert isinstance(loaded, DictConfig)
    try:
        cfg = checked(loaded)
        if model is not None:
            cfg = select_model(cfg, model)
        merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as error:
        raise UserError(f"{path}: {config_error(error)}") from None
    assert isinstance(merged, DictConfig)
    return merged


def select_model(cfg: DictConfig, name: str) -> DictConfig:
    """One model of a pipeline config: `models.<name>` becomes `model`; `models` and
    `feature_models` are dropped.

    A model under `feature_models.<name>` (trained by the pipeline but not evaluated as a
    generator: the face encoder) brings its own loop settings: its `model` becomes `model` and
    its `train` becomes `train`. A model under `models` may carry its own `train` settings
    (`models.<name>.train`: fewer steps for a costly family in the demo), merged over `train`.
    """
    models = cfg.get("models") or {}
    feature_models = cfg.get("feature_models") or {}
    if name in models:
        model, train = models[name], cfg.get("train")
        if model.get("train"):
            train = OmegaConf.merge(train, model.train)
    elif name in feature_models:
        model, train = feature_models[name].model, feature_models[name].train
    else:
        known = sorted([*models, *feature_models])
        raise UserError(f"no model '{name}' under `models` in this config; configured: {known}")
    kept = {str(key): cfg[key] for key in cfg if key not in ("models", "feature_models")}
    selected = OmegaConf.create({**kept, "model": model, "train": train})
    OmegaConf.set_struct(selected, True)
    return selected


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Hydra's own command-line flags that apply here: `--cfg job` (with `--resolve`) and
    `-m`, which is refused in favour of DVC experiments."""
    parser.add_argument(
        "--cfg",
        choices=["job"],
        help="print the config this command would run with (YAML) and exit, as Hydra's --cfg job",
    )
    parser.add_argument(
        "--resolve", action="store_true", help="with --cfg job: resolve ${...} interpolations"
    )
    parser.add_argument("-m", "--multirun", action="store_true", help=f"not here: {SWEEPS}")


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The command line every stage shares: `--params FILE`, Hydra-style overrides and flags."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Configuration comes from configs/ (Hydra), checked against its typed schemas. Examples:\n"
            "  %(prog)s data=folder data.path=../shared/data/celeba-sample-10k\n"
            "  %(prog)s --params params.yaml            (as `dvc repro` runs it)\n"
            "  %(prog)s --params params.yaml data.resolution=48\n"
            "  %(prog)s --cfg job                       (print the config, run nothing)\n"
            "Sweeps (Hydra's -m) run as DVC experiments, one per combination:\n"
            "  dvc exp run --queue -S 'train.steps=1000,2000' && dvc queue start"
        ),
    )
    parser.add_argument(
        "--params",
        metavar="FILE",
        help="composed config to read (params.yaml under DVC) instead of composing configs/",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help="Hydra overrides such as data.resolution=64",
    )
    add_config_options(parser)
    return parser


def job_config(cfg: DictConfig, args: argparse.Namespace) -> DictConfig:
    """`cfg`, the config a command runs with; `--cfg job` prints it and exits instead."""
    if args.cfg == "job":
        print(OmegaConf.to_yaml(cfg, resolve=args.resolve), end="")
        raise SystemExit(0)
    return cfg


def refuse_multirun(args: argparse.Namespace) -> None:
    if args.multirun:
        raise UserError(f"-m/--multirun is not supported: {SWEEPS}")


def config_from_args(args: argparse.Namespace) -> DictConfig:
    """The config a stage runs with, from `stage_parser`'s parsed arguments. A bad setting
    ends the stage with one line (exit code 1), whether or not its main reports errors."""
    with reported_errors(running_stage()):
        refuse_multirun(args)
        if args.params:
            return job_config(load_params(args.params, args.overrides), args)
        return job_config(compose("config", [*tracking_source()[0], *args.overrides]), args)


def running_stage() -> str:
    """The short name of the module run with `python -m` (features, report), for error lines."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0]).stem
    return name.removesuffix(".__main__").rsplit(".", 1)[-1]


def model_configs() -> list[str]:
    """The families configs/model/ has a config for (model=NAME)."""
    return sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))


def model_stage_parser(description: str, verb: str) -> argparse.ArgumentParser:
    """`stage_parser` plus `--model NAME`, for the stages that act on one model family."""
    parser = stage_parser(description)
    parser.add_argument(
        "--model",
        metavar="NAME",
        help=f"model to {verb}: with --params, a name under models or feature_models of that "
        f"file; otherwise the family, as the override model=NAME ({', '.join(model_configs())})",
    )
    return parser


def model_config_from_args(args: argparse.Namespace) -> DictConfig:
    """configs/config.yaml with overrides, or params.yaml with `models.<--model>` as `model`."""
    refuse_multirun(args)
    if not args.params:
        model = [f"model={args.model}"] if args.model else []
        overrides = [*tracking_source()[0], *args.overrides, *model]
        return job_config(compose("config", overrides), args)
    cfg = load_params(args.params, args.overrides, args.model)
    if "model" not in cfg:
        raise UserError(f"{args.params} holds several models: pass --model NAME")
    return job_config(cfg, args)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Print a composed config as YAML. With no arguments, prints the pipeline "
        "config that `params.yaml` must hold: `python -m face_generation.config > params.yaml`."
    )
    parser.add_argument("--name", default="pipeline", help="config to compose (pipeline|config)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = parser.parse_args(argv)
    header = (
        "# Generated from configs/ by `python -m face_generation.config`; never edit by hand.\n"
    )
    with reported_errors("config"):
        cfg = compose(args.name, args.overrides)
    print(header + OmegaConf.to_yaml(cfg, resolve=True), end="")


if __name__ == "__main__":
    main()
