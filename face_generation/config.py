"""Loading the Hydra config tree in `configs/`: the single source of truth for parameters.

Every stage is `python -m face_generation.<module>` and takes its config one of two ways:
  * Hydra overrides, composed from `configs/config.yaml`: `... data=folder data.path=faces`;
  * `--params params.yaml`, the composed `configs/pipeline.yaml` that DVC tracks, plus
    optional overrides on top (dotted keys only).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(os.environ.get("FACE_GENERATION_CONFIGS", Path(__file__).parents[1] / "configs"))


def compose(config_name: str = "config", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/<config_name>.yaml` with Hydra overrides, as Hydra's CLI would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR.resolve()), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def load_params(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a composed config file (params.yaml) and apply dotted `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"params file {path} does not exist; write it with `make params` "
            "(python -m face_generation.config > params.yaml)"
        )
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    assert isinstance(cfg, DictConfig)
    return cfg


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The command line every stage shares: `--params FILE` and Hydra-style overrides."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Configuration comes from configs/ (Hydra). Examples:\n"
            "  %(prog)s data=folder data.path=../shared/data/celeba-sample-10k\n"
            "  %(prog)s --params params.yaml            (as `dvc repro` runs it)\n"
            "  %(prog)s --params params.yaml data.resolution=48"
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
    return parser


def config_from_args(args: argparse.Namespace) -> DictConfig:
    """The config a stage runs with, from `stage_parser`'s parsed arguments."""
    if args.params:
        return load_params(args.params, args.overrides)
    return compose("config", args.overrides)


def select_model(cfg: DictConfig, name: str) -> DictConfig:
    """One model of a pipeline config: `models.<name>` becomes `model`; `models` and
    `feature_models` are dropped.

    A model under `feature_models.<name>` (trained by the pipeline but not evaluated as a
    generator: the face encoder) brings its own loop settings: its `model` becomes `model`
    and its `train` becomes `train`. Keys already under `model` (an override such as
    `model.beta=2` on top of params.yaml) win over the selected ones.
    """
    models = cfg.get("models") or {}
    feature_models = cfg.get("feature_models") or {}
    if name in models:
        selected, train = models[name], cfg.get("train")
    elif name in feature_models:
        selected, train = feature_models[name].model, feature_models[name].train
    else:
        known = sorted([*models, *feature_models])
        raise ValueError(f"no model '{name}' under `models` in this config; configured: {known}")
    model = OmegaConf.merge(selected, cfg.get("model") or {})
    dropped = ("model", "models", "feature_models", "train")
    rest = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key not in dropped])
    merged = OmegaConf.merge(rest, {"model": model, "train": train})
    assert isinstance(merged, DictConfig)
    return merged


def model_stage_parser(description: str, verb: str) -> argparse.ArgumentParser:
    """`stage_parser` plus `--model NAME`, for the stages that act on one model family."""
    parser = stage_parser(description)
    parser.add_argument(
        "--model",
        metavar="NAME",
        help=f"model family to {verb} (vae, dcgan, encoder): with --params, picks models.NAME "
        "(or feature_models.NAME); otherwise the same as the override model=NAME",
    )
    return parser


def model_config_from_args(args: argparse.Namespace, stage: str) -> DictConfig:
    """configs/config.yaml with overrides, or params.yaml with `models.<--model>` as `model`."""
    if args.params:
        if args.model:
            try:
                selected = select_model(load_params(args.params), args.model)
            except ValueError as error:
                raise SystemExit(f"[{stage}] error: {error} (--model {args.model})") from None
            # Overrides apply to the selected model and its loop settings.
            merged = OmegaConf.merge(selected, OmegaConf.from_dotlist(list(args.overrides)))
            assert isinstance(merged, DictConfig)
            return merged
        cfg = load_params(args.params, args.overrides)
        if "model" not in cfg or "name" not in cfg.model:
            raise SystemExit(f"{args.params} holds several models: pass --model NAME")
        return cfg
    return compose("config", [*args.overrides, *([f"model={args.model}"] if args.model else [])])


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
    print(header + OmegaConf.to_yaml(compose(args.name, args.overrides), resolve=True), end="")


if __name__ == "__main__":
    main()
