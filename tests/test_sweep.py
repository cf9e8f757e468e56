"""lit-idpo sweep: spec checks, every sweep file parses, and configs/sweeps/tiny.yaml end to end with resuming."""

import glob
import json
import os
from pathlib import Path

import pytest
import yaml

from lit_idpo import sweep as sw

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(glob.glob(str(ROOT / "configs" / "sweeps" / "*.yaml")))


def _write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


BASE = {"base_config": str(ROOT / "configs" / "tiny.yaml"), "output_dir": "out", "settings": [{"layers": [1]}]}


@pytest.mark.parametrize("change, message", [
    ({"setings": []}, r"unknown key\(s\) \['setings'\]"),
    ({"settings": [{"layers": []}]}, r"settings\[0\].layers=\[\].*non-empty"),
    ({"settings": [{"layers": [1], "gamma": 1.0}]}, r"gamma=1.0.*'dpo' baseline"),
    ({"settings": [{"layers": [1], "name": "dpo"}]}, "clash"),
    ({"settings": [{"layers": [1]}, {"layers": [1]}]}, "used twice"),
    ({"settings": [{"layers": [1], "overrides": {"model.gamma": 0.3}}]}, "sets 'model.gamma'"),
    ({"base_config": "nope.yaml"}, "not found"),
    ({"evaluate": {"judges": {}}}, "unknown key"),
])
def test_spec_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        sw.load_spec(_write(tmp_path, {**BASE, **change}))


def test_grid_expands_and_names(tmp_path):
    spec = sw.load_spec(_write(tmp_path, {**BASE, "grid": {"layers": [[2], [1, 3]], "gamma": [0.25, 0.5]}}))
    assert [(s.name, s.layers, s.gamma, s.k) for s in spec.settings] == [
        ("L1", [1], None, 1), ("L2-g0.25", [2], 0.25, 1), ("L2-g0.5", [2], 0.5, 1),
        ("L1+3-g0.25", [1, 3], 0.25, 2), ("L1+3-g0.5", [1, 3], 0.5, 2)]


@pytest.mark.parametrize("path", SWEEPS, ids=[os.path.basename(p) for p in SWEEPS])
def test_every_sweep_file_parses_with_its_fit_config(path, tmp_path):
    spec = sw.load_spec(path, output_dir=str(tmp_path / "out"))
    sweep = sw.Sweep(spec)  # parses the full fit config (base + overrides) with the real CLI parser
    plan = sweep.plan()
    assert len(plan) == len(spec.settings) + spec.baselines["dpo"]
    for setting in spec.settings:
        config = yaml.safe_load((tmp_path / "out" / "runs" / setting.name / "setting.yaml").read_text())
        assert config["model"]["layers"] == setting.layers
        configs = sweep.common_configs + [str(tmp_path / "out" / "runs" / setting.name / "setting.yaml")]
        full = sw._parse_fit_config(configs)
        assert full.model.layers == setting.layers
        assert full.model.gamma == (setting.gamma if setting.gamma is not None else sweep.base.model.gamma)


def test_tiny_sweep_end_to_end_resumes(tmp_path, monkeypatch):
    import lit_idpo.cli

    out = tmp_path / "sweep"
    real_main = lit_idpo.cli.main
    calls = []

    def counting_main(args=None):
        calls.append(args)
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt("simulated interruption during training")
        return real_main(args)

    monkeypatch.setattr(lit_idpo.cli, "main", counting_main)
    config = ROOT / "configs" / "sweeps" / "tiny.yaml"

    # First invocation is interrupted during the second training run.
    fail_on = 2
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(config, output_dir=str(out), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["settings"]) == ["dpo"]

    # The second one trains the two missing runs (not dpo again) and evaluates.
    calls.clear()
    fail_on = None
    summary = sw.run_sweep(config, output_dir=str(out), progress=False)
    assert len(calls) == 2
    trained_layers = [yaml.safe_load(Path(args[-1]).read_text())["model"]["layers"] for args in calls]  # setting.yaml
    assert trained_layers == [[1], [1, 3]]
    rows = {r["name"]: r for r in summary["rows"]}
    assert set(rows) == {"dpo", "L1", "L1+3-g0.25"}
    assert rows["L1+3-g0.25"]["gamma"] == 0.25 and rows["L1"]["gamma"] == 0.5 and rows["L1+3-g0.25"]["k"] == 2
    evaluation = json.loads((out / "eval" / "results.json").read_text())
    pairs = {(p["first"], p["second"]): p for p in evaluation["pairs"]}
    assert set(pairs) == {("L1", "dpo"), ("L1", "sft"), ("L1+3-g0.25", "dpo"), ("L1+3-g0.25", "sft"), ("dpo", "sft")}
    assert rows["L1"]["vs_dpo"]["win_rate"] == pairs[("L1", "dpo")]["win_rate"]
    assert rows["dpo"]["vs_sft"]["prompts"] == 4
    assert evaluation["implicit_reward"]["layers"] == [1, 2, 3, 4]
    table = (out / "sweep_results.md").read_text()
    assert "| L1+3-g0.25 | 1,3 | 2 | 0.25 |" in table
    png = (out / "sweep_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # A third invocation trains nothing and regenerates nothing.
    from transformers.generation.utils import GenerationMixin

    generated = []
    original = GenerationMixin.generate
    monkeypatch.setattr(GenerationMixin, "generate", lambda self, *a, **k: generated.append(1) or original(self, *a, **k))
    calls.clear()
    again = sw.run_sweep(config, output_dir=str(out), progress=False)
    assert calls == [] and generated == []
    assert [r["vs_sft"] for r in again["rows"]] == [r["vs_sft"] for r in summary["rows"]]

    # Changing one setting's configuration retrains that setting only.
    spec = yaml.safe_load(config.read_text())
    spec["base_config"] = str(ROOT / "configs" / "tiny.yaml")
    spec["settings"][1]["gamma"] = 0.75
    spec["settings"][1]["name"] = "L1+3-g0.25"  # same name, new configuration
    changed = _write(tmp_path, spec, "changed.yaml")
    calls.clear()
    sw.run_sweep(changed, output_dir=str(out), train_only=True, progress=False)
    assert len(calls) == 1


def test_reproduction_script_dry_run_prints_the_exact_commands(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce_intermediate_dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--dry_run", "--output_dir", str(tmp_path / "repro")])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("lit-idpo sweep --config ") and "smollm2_arithmetic.yaml" in printed[0]
    runs = [line.split("]", 1)[1].split(":", 1)[0].strip() for line in printed[1:]]
    assert runs == ["dpo", "L5", "L21", "L27", "L14+21", "L7+14+21"]
    for line in printed[1:]:
        assert "lit-idpo fit --config" in line and (tmp_path / "repro" / "fit_overrides.yaml").is_file()
