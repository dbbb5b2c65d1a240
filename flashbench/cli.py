"""The ``flashbench`` command: a Hydra application over conf/.

Errors in the configuration or the checkpoint files end the run with one line on
stderr that names the value and the fix, and a non-zero exit status.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXIT_CONFIG = 2

logger = logging.getLogger(__name__)


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def check_group_overrides(argv: list[str]) -> str | None:
    """Return an error for a config group option that does not exist, before Hydra composes.

    Hydra's own message for this spans many lines; this one names the value and the choices.
    """
    for argument in argv:
        key, equals, value = argument.lstrip("+~").partition("=")
        if not equals or key not in ("strategy", "workload", "fault", "cluster", "experiment"):
            continue
        options = group_options(key)
        for choice in value.split(","):
            if choice not in options:
                message = f"unknown {key} {choice!r}: expected one of {', '.join(options)}"
                close = difflib.get_close_matches(choice, options, n=1)
                return message + (f" (did you mean {close[0]!r}?)" if close else "")
    return None


def main() -> None:
    error = check_group_overrides(sys.argv[1:])
    if error:
        print(f"flashbench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)

    import hydra

    task = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(run_task)
    task()


def run_task(cfg) -> None:
    """Run one composed configuration; print the results directory last."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from strategies import CheckpointError

    from flashbench.config import ExperimentConfig
    from flashbench.runner import run_and_report
    from flashbench.supervisor import TrainingFailed

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = ExperimentConfig.from_mapping(OmegaConf.to_container(cfg, resolve=True))
        table = run_and_report(config, run_dir)
    except (CheckpointError, ValueError, TrainingFailed, OSError) as error:
        print(f"flashbench: error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG if isinstance(error, ValueError) else 1)
    print(table)
    print(f"results: {run_dir}")


if __name__ == "__main__":
    main()
