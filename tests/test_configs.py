"""Every YAML under configs/ is parsed by a test: fit configs (test_module.py), sweep files (test_sweep.py), and
here the evaluate and speculate configs, through the same parsers their commands use."""

from pathlib import Path

import pytest

from lit_idpo.evaluation.command import build_parser as evaluate_parser
from lit_idpo.speculate.command import build_parser as speculate_parser

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PARSERS = {"evaluate": evaluate_parser, "speculate": speculate_parser}
# Where each folder's files are parsed: a folder of configs/ that no test reads fails the coverage test below.
PARSED_BY = {".": "test_module.py::test_every_config_parses",
             "sweeps": "test_sweep.py::test_every_sweep_file_parses_with_its_fit_config",
             "evaluate": "this file", "speculate": "this file"}


@pytest.mark.parametrize("path", sorted((CONFIGS / "evaluate").glob("*.yaml")) + sorted(
    (CONFIGS / "speculate").glob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_evaluate_and_speculate_config_parses(path):
    parser = PARSERS[path.parent.name]()
    config = parser.parse_args(["--config", str(path)])
    init = parser.instantiate_classes(config)  # the option dataclasses run their checks
    assert init.model  # the one required option


def test_every_config_folder_is_parsed_by_a_test():
    folders = {str(p.parent.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.y*ml")}
    assert folders <= set(PARSED_BY), f"configs/{sorted(folders - set(PARSED_BY))}: add a parsing test"
