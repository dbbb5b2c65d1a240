"""From a validated config to the result files: measure, project, report."""

from __future__ import annotations

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
    cost_profile = run_experiment(config, run_dir)
    projection = project(cost_profile, preset, strategies=config.strategies)
    return write_reports(projection, cost_profile, preset, run_dir)
