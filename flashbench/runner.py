"""From a validated config to the result files: measure, project, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flashbench.config import ExperimentConfig
from flashbench.experiment import run_experiment
from flashbench.projection import project
from flashbench.report import write_reports
from flashbench.sim import ClusterPreset

logger = logging.getLogger(__name__)


def run_and_report(config: ExperimentConfig, run_dir: Path) -> str:
    """Run the experiment in ``run_dir`` and write projection.csv, table.md and the plot; return the table."""
    preset = ClusterPreset.from_mapping(config.cluster)  # validated before any training starts
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.profile:
        cost_profile = load_profile(Path(config.profile))
        (run_dir / "profile.json").write_text(json.dumps(cost_profile, indent=1))
        strategies = [name for name in config.strategies if name in cost_profile["strategies"]] or None
    else:
        cost_profile = run_experiment(config, run_dir)
        strategies = config.strategies
    if config.report == "paper_table":
        from flashbench.report import write_paper_table

        return write_paper_table(cost_profile, preset, run_dir)
    projection = project(cost_profile, preset, strategies=strategies)
    return write_reports(projection, cost_profile, preset, run_dir)


def load_profile(path: Path) -> dict:
    """Read a profile.json written by an earlier run, to project it without measuring again."""
    try:
        profile = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"profile {str(path)!r} does not exist: pass the profile.json of an earlier run") from None
    except IsADirectoryError:
        raise ValueError(f"profile {str(path)!r} is a directory: pass the profile.json file inside a run directory") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"profile {str(path)!r} is not valid JSON ({error}): pass the profile.json of an earlier run") from None
    if not isinstance(profile, dict) or not isinstance(profile.get("strategies"), dict) or not profile["strategies"]:
        raise ValueError(f"profile {str(path)!r} has no strategies: pass the profile.json of an earlier run")
    logger.info("projecting the profile %s without measuring", path)
    return profile
