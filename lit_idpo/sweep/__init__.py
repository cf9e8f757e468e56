"""``lit-idpo sweep``: train a list of settings from one base config and judge each against DPO and SFT.

    spec.py     the sweep file's options (dataclasses the parser is built from) and their checks
    runner.py   the runs: one ``lit-idpo fit`` child process per setting, the manifest, the evaluation
    seeds.py    a ``seeds`` list: per-seed names and intervals over training runs
    report.py   the markdown table and the plot

What a sweep does, step by step: docs/sweep.md.
"""

from lit_idpo.sweep.report import format_sweep_markdown, plot_sweep
from lit_idpo.sweep.runner import Sweep, TrainingRunError, main, run_sweep
from lit_idpo.sweep.seeds import eval_name, run_key
from lit_idpo.sweep.spec import Setting, SweepConfig, SweepSpec, load_spec

__all__ = ["Setting", "Sweep", "SweepConfig", "SweepSpec", "TrainingRunError", "eval_name", "format_sweep_markdown",
           "load_spec", "main", "plot_sweep", "run_key", "run_sweep"]
