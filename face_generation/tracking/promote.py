"""Move the champion alias by hand: `python -m face_generation.tracking.promote --model NAME`.

Evaluation moves `tracking.champion.alias` only on a comparison that means something (enough
samples, the same data and settings, a run in the workspace). This is the explicit way for
everything else: an experiment you applied after it ran from the queue, or the embedded
default, whose 10 test faces are too few for any automatic choice. It points the alias of
`<registered_model_prefix>-NAME` at `--version N` (default: the newest), and the version's
description says it was promoted by hand, with its evaluation's numbers and settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from face_generation.tracking.delivery import SETTINGS_TAG, hand_alias, http_settings
from face_generation.tracking.provenance import registered_model_name
from face_generation.tracking.server import tracking_uri, ui_url


def promote(cfg: DictConfig, model: str, version: str | None = None) -> str:
    """Point the champion alias of `model`'s registered model at `version` (the newest when
    None); the version promoted."""
    name = registered_model_name(cfg, model)
    champion = cfg.champion
    with http_settings(cfg.request_timeout_s, cfg.request_max_retries):
        client = MlflowClient(tracking_uri(cfg))
        if version is None:
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ValueError(f"{name} has no registered version on {tracking_uri(cfg)}")
            version = str(max(int(v.version) for v in versions))
        tags = client.get_model_version(name, version).tags
        score = tags.get(champion.metric, "not evaluated")
        settings = f" ({tags[SETTINGS_TAG]})" if SETTINGS_TAG in tags else ""
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        why = (
            f"promoted by hand on {when} (python -m face_generation.tracking.promote), "
            f"not by comparison; {champion.metric} {score}{settings}"
        )
        hand_alias(client, name, str(champion.alias), version, why)
    return version


def main(argv: Sequence[str] | None = None) -> None:
    from face_generation.config import config_from_args, stage_parser
    from face_generation.errors import reported_errors

    parser = stage_parser(__doc__ or "")
    parser.prog = "python -m face_generation.tracking.promote"
    parser.add_argument("--model", required=True, help="the model family: vae, dcgan, ...")
    parser.add_argument("--version", help="the registered version (default: the newest)")
    args = parser.parse_args(argv)
    with reported_errors("tracking"):
        cfg = config_from_args(args).tracking
    from mlflow.exceptions import MlflowException

    try:
        version = promote(cfg, args.model, args.version)
    except (MlflowException, ValueError) as error:
        raise SystemExit(f"[tracking] cannot promote: {str(error).splitlines()[0]}") from None
    name = registered_model_name(cfg, args.model)
    print(
        f"[tracking] {name}@{cfg.champion.alias} is version {version}: "
        f"{ui_url(tracking_uri(cfg), f'models/{name}/versions/{version}')}"
    )


if __name__ == "__main__":
    main()
