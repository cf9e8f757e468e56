"""lit-idpo sweep with ``seeds``: the interval over training runs and the two-level bootstrap against hand-computed
values, the verdict, the ``seeds`` key's checks, and configs/sweeps/tiny_seeds.yaml end to end (two seeds, two
settings, resuming)."""

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from lit_idpo.errors import ConfigError
from lit_idpo.evaluation.implicit import pair_correctness
from lit_idpo.evaluation.statistics import bootstrap_interval, over_seeds, t_quantile, two_level_bootstrap
from lit_idpo.sweep import runner as sw
from lit_idpo.sweep.report import format_seeds_markdown, plot_sweep
from lit_idpo.sweep.seeds import summarize_seeds
from lit_idpo.sweep.spec import Setting

ROOT = Path(__file__).resolve().parents[1]
TINY_SEEDS = ROOT / "configs" / "sweeps" / "tiny_seeds.yaml"
BASE = {"base_config": str(ROOT / "configs" / "tiny.yaml"), "output_dir": "out", "settings": [{"layers": [1]}]}


# ---------------------------------------------------------------- the interval over seeds
def test_over_seeds_two_values_by_hand():
    # n = 2: t_{0.975, 1} = tan(0.475 pi) = 12.7062...; s = 0.1 * sqrt(2); half = t * s / sqrt(2) = t * 0.1.
    t = math.tan(math.pi * 0.475)
    got = over_seeds([0.4, 0.6])
    assert got["mean"] == pytest.approx(0.5, abs=1e-12)
    assert got["ci_low"] == pytest.approx(0.5 - 0.1 * t, abs=1e-9)
    assert got["ci_high"] == pytest.approx(0.5 + 0.1 * t, abs=1e-9)
    assert got["per_seed"] == [0.4, 0.6] and got["seeds"] == 2 and got["ci_method"] == "t over seeds"
    clipped = over_seeds([0.4, 0.6], bounds=(0.0, 1.0))  # win rates cannot leave [0, 1]
    assert (clipped["ci_low"], clipped["ci_high"]) == (0.0, 1.0)


def test_over_seeds_three_values_by_hand():
    # n = 2 degrees of freedom has a closed form: t_q = (2q - 1) * sqrt(2 / (4 q (1 - q))).
    q = 0.975
    t = (2 * q - 1) * math.sqrt(2 / (4 * q * (1 - q)))
    values = [0.45, 0.55, 0.62]  # mean 0.54; squared deviations 0.0081 + 0.0001 + 0.0064 = 0.0146; s^2 = 0.0073
    half = t * math.sqrt(0.0073) / math.sqrt(3)
    got = over_seeds(values, bounds=(0.0, 1.0))
    assert got["mean"] == pytest.approx(0.54, abs=1e-12)
    assert got["ci_low"] == pytest.approx(0.54 - half, abs=1e-9)
    assert got["ci_high"] == pytest.approx(0.54 + half, abs=1e-9)
    # 90 %: df = 2, q = 0.95.
    q = 0.95
    t90 = (2 * q - 1) * math.sqrt(2 / (4 * q * (1 - q)))
    assert over_seeds(values, 0.90)["ci_high"] == pytest.approx(0.54 + t90 * math.sqrt(0.0073 / 3), abs=1e-9)


def test_one_seed_has_no_interval_and_says_so():
    got = over_seeds([0.7])
    assert got["mean"] == 0.7 and got["ci_low"] is None and got["ci_high"] is None and got["ci_method"] is None
    assert two_level_bootstrap([[1.0, 0.0, 0.5]]) is None
    one = sw.compare_over_seeds([[1.0, 0.0, 1.0]], null=0.5, versus="DPO", bounds=(0.0, 1.0))
    assert one["verdict"] == "one seed: no interval over training runs (add seeds)"
    assert one["bootstrap_low"] is None and one["per_seed"] == [pytest.approx(2 / 3)]
    with pytest.raises(ValueError, match="at least one seed"):
        over_seeds([])


# ---------------------------------------------------------------- the two-level bootstrap
def test_two_level_bootstrap_equals_the_seed_bootstrap_when_prompts_are_constant_within_seeds():
    per_seed = [[0.2] * 5, [0.7] * 3, [0.5] * 4, [0.9] * 2]
    got = two_level_bootstrap(per_seed, resamples=2000, seed=3)
    plain = bootstrap_interval([0.2, 0.7, 0.5, 0.9], resamples=2000, seed=3)
    assert got.low == pytest.approx(plain.low, abs=1e-12) and got.high == pytest.approx(plain.high, abs=1e-12)


def test_two_level_bootstrap_adds_the_prompt_noise_and_contains_the_mean():
    # Equal seed means (0.5): resampling seeds alone gives a zero-width interval; the prompts' spread widens it.
    per_seed = [[0.0, 1.0, 0.5, 0.5], [1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 1.0]]
    got = two_level_bootstrap(per_seed, resamples=2000, seed=0)
    assert got.low < 0.5 < got.high and 0.0 <= got.low and got.high <= 1.0
    assert bootstrap_interval([0.5, 0.5, 0.5], resamples=2000).low == 0.5
    assert two_level_bootstrap(per_seed, resamples=2000, seed=0) == got  # seeded: reproducible
    # Shifted data: the interval moves with it, and contains the mean of the seed means.
    shifted = [[v * 0.5 + 0.5 for v in s] for s in per_seed]
    moved = two_level_bootstrap(shifted, resamples=2000, seed=0)
    assert moved.low == pytest.approx(0.5 * got.low + 0.5) and moved.high == pytest.approx(0.5 * got.high + 0.5)
    uneven = [[1.0, 1.0, 0.5], [0.0, 1.0], [1.0, 0.5, 0.5, 1.0]]
    mean = statistics.fmean(statistics.fmean(s) for s in uneven)
    boot = two_level_bootstrap(uneven)
    assert boot.low <= mean <= boot.high


@pytest.mark.parametrize("per_seed, null, expected", [
    ([[0.6, 0.7], [0.65, 0.7], [0.7, 0.6]], 0.5, "better than DPO"),
    ([[0.3, 0.4], [0.35, 0.4], [0.4, 0.3]], 0.5, "worse than DPO"),
    ([[0.4, 0.6], [0.6, 0.5], [0.55, 0.45]], 0.5, "no detectable difference"),
    ([[0.1, 0.0], [0.05, 0.1], [0.1, 0.05]], 0.0, "better than DPO"),
])
def test_the_verdict_reads_the_t_interval(per_seed, null, expected):
    got = sw.compare_over_seeds(per_seed, null=null, versus="DPO", bounds=(-1.0, 1.0))
    assert got["verdict"] == expected
    assert got["per_seed"] == pytest.approx([statistics.fmean(s) for s in per_seed])
    assert got["prompts"] == [2, 2, 2] and got["bootstrap_low"] <= got["mean"] <= got["bootstrap_high"]
    assert sw.verdict(0.5, 0.6, 0.5, "SFT") == "no detectable difference"  # touching the null is not "better"


# ---------------------------------------------------------------- the seeds key
def _write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("seeds, message", [
    ([], r"seeds=\[\]; give a list of distinct non-negative integers"),
    ([-1], r"seeds has \[-1\], not a non-negative integer; give a list"),
    ([1, 1], r"seeds=\[1, 1\] lists a seed twice"),
    (["a"], r"seeds: give a list of distinct non-negative integers, e.g. seeds: \[0, 1, 2\]"),
    (3, r"seeds: give a list of distinct non-negative integers"),
    ([0.5], r"seeds: give a list"),
])
def test_bad_seeds_name_the_key_and_the_fix(tmp_path, seeds, message):
    with pytest.raises(ConfigError, match=message):
        sw.load_spec(_write(tmp_path, {**BASE, "seeds": seeds}))


def test_a_setting_may_not_override_what_seeds_sets(tmp_path):
    spec = {**BASE, "seeds": [0, 1], "settings": [{"layers": [1], "overrides": {"data.seed": 3}}]}
    with pytest.raises(ConfigError, match=r"setting 'L1' overrides \['data.seed'\], which seeds sets"):
        sw.load_spec(_write(tmp_path, spec))
    assert sw.load_spec(_write(tmp_path, {**BASE, "seeds": [2, 0]})).seeds == [2, 0]
    assert sw.load_spec(_write(tmp_path, BASE)).seeds is None


def test_dry_run_with_seeds_lists_every_arm_seed_and_a_sweep_without_seeds_sets_no_seed(tmp_path, capsys):
    out = tmp_path / "out"
    sw.main(["--config", str(TINY_SEEDS), "--dry_run", "--output_dir", str(out)])
    lines = capsys.readouterr().out.splitlines()
    runs = ["dpo/seed0", "L1/seed0", "L1+3-g0.25/seed0", "dpo/seed1", "L1/seed1", "L1+3-g0.25/seed1"]
    assert [line.split(":", 1)[0] for line in lines] == [f"[to train] {r}" for r in runs]
    for run in runs:
        config = yaml.safe_load((out / "runs" / run / "setting.yaml").read_text())
        seed = int(run[-1])
        assert config["seed_everything"] == seed and config["data"]["seed"] == seed
        assert config["model"]["hf_output_dir"] == str((out / "runs" / run / "hf_model").resolve())
    plain = sw.Sweep(sw.load_spec(ROOT / "configs" / "sweeps" / "tiny.yaml", output_dir=str(tmp_path / "plain")))
    # Without seeds the per-setting config (and so its hash: finished runs stay finished) is what it was.
    assert set(plain.setting_config(plain.runs["L1"])) == {"model", "trainer"}
    assert "seed" not in plain.setting_config(plain.runs["L1"]).get("data", {})


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_sweep_over_two_seeds_end_to_end_resumes(tmp_path, monkeypatch):
    out = tmp_path / "sweep"

    class Trainings:
        """Records each child training's argv; raises KeyboardInterrupt as training number ``stop_at`` starts."""

        def __init__(self, real):
            self.real, self.argvs, self.stop_at = real, [], None

        def __call__(self, argv, log_path):
            self.argvs.append(list(argv))
            if len(self.argvs) == self.stop_at:
                raise KeyboardInterrupt("simulated interruption during training")
            return self.real(argv, log_path)

    trainings = Trainings(sw.run_logged)
    monkeypatch.setattr(sw, "run_logged", trainings)
    trainings.stop_at = 3  # interrupted during seed 0's third arm
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(TINY_SEEDS, output_dir=str(out), progress=False)
    assert list(json.loads((out / "manifest.json").read_text())["settings"]) == ["dpo/seed0", "L1/seed0"]

    trainings.argvs, trainings.stop_at = [], None
    summary = sw.run_sweep(TINY_SEEDS, output_dir=str(out), progress=False)
    trained = [Path(argv[-1]).parent.relative_to(out / "runs").as_posix() for argv in trainings.argvs]
    assert trained == ["L1+3-g0.25/seed0", "dpo/seed1", "L1/seed1", "L1+3-g0.25/seed1"]  # finished ones skipped
    manifest = json.loads((out / "manifest.json").read_text())["settings"]
    for arm in ("dpo", "L1", "L1+3-g0.25"):
        for seed in (0, 1):
            run = out / "runs" / arm / f"seed{seed}"
            assert (run / "hf_model" / "config.json").is_file() and (run / "command.txt").is_file()
            assert manifest[f"{arm}/seed{seed}"]["seed"] == seed
            # What the child read: the arms of one seed share every seed of the training.
            config = yaml.safe_load((run / "setting.yaml").read_text())
            assert (config["seed_everything"], config["data"]["seed"]) == (seed, seed)
            lightning = yaml.safe_load(next(run.glob("lightning_logs/version_*/config.yaml")).read_text())
            assert lightning["seed_everything"] == seed and lightning["data"]["seed"] == seed

    evaluation = json.loads((out / "eval" / "results.json").read_text())
    pairs = {(p["first"], p["second"]): p for p in evaluation["pairs"]}
    assert set(pairs) == {(f"{a}@seed{k}", b if b == "sft" else f"{b}@seed{k}")
                          for k in (0, 1) for a, b in [("L1", "dpo"), ("L1", "sft"), ("L1+3-g0.25", "dpo"),
                                                       ("L1+3-g0.25", "sft"), ("dpo", "sft")]}
    assert sum(m["name"] == "sft" for m in evaluation["models"]) == 1  # SFT generated once
    saved = json.loads((out / "sweep_results.json").read_text())
    summary.pop("wall_time_s_this_invocation")  # added to the returned summary, not to the file
    assert saved["seeds"] == [0, 1] and saved == json.loads(json.dumps(summary))
    rows = {r["name"]: r for r in saved["rows"]}
    assert list(rows) == ["dpo", "L1", "L1+3-g0.25"] and rows["dpo"]["vs_dpo"] is None
    for name in ("L1", "L1+3-g0.25"):
        for comparison, baseline in (("vs_dpo", "dpo"), ("vs_sft", "sft")):
            c = rows[name][comparison]
            for key in ("mean", "ci_low", "ci_high", "per_seed", "bootstrap_low", "bootstrap_high", "verdict"):
                assert key in c, (name, comparison, key)
            assert len(c["per_seed"]) == 2 and c["ci_low"] is not None
            other = [baseline if baseline == "sft" else f"dpo@seed{k}" for k in (0, 1)]
            assert c["per_seed"] == [pairs[(f"{name}@seed{k}", other[k])]["win_rate"] for k in (0, 1)]
            assert c["mean"] == pytest.approx(statistics.fmean(c["per_seed"]))
        accuracy = rows[name]["accuracy_vs_dpo"]
        assert len(accuracy["per_seed"]) == 2 and accuracy["verdict"]
        assert [e["layer"] for e in rows[name]["implicit"]] == [1, 2, 3, 4]
        assert all(len(e["per_seed"]) == 2 for e in rows[name]["implicit"])
        # The implicit-reward accuracy's paired difference to the same seed's DPO, per layer.
        implicit = evaluation["implicit_reward"]["models"]
        assert [e["layer"] for e in rows[name]["implicit_vs_dpo"]] == [1, 2, 3, 4]
        for i, entry in enumerate(rows[name]["implicit_vs_dpo"]):
            assert entry["per_seed"] == pytest.approx([implicit[f"{name}@seed{k}"]["accuracy"][i]
                                                       - implicit[f"dpo@seed{k}"]["accuracy"][i] for k in (0, 1)])
            assert entry["prompts"] == [evaluation["implicit_reward"]["pairs"]] * 2 and entry["verdict"]
        for model in implicit.values():  # the per-pair record agrees with the accuracy
            assert [statistics.fmean(c) for c in pair_correctness(model)] == pytest.approx(model["accuracy"])
        # Every comparison carries mean, interval and per-seed values; the mean is the per-seed values' mean.
        for c in [rows[name][k] for k in ("vs_dpo", "vs_sft", "score", "accuracy_vs_dpo")] + \
                rows[name]["implicit"] + rows[name]["implicit_vs_dpo"]:
            assert {"mean", "ci_low", "ci_high", "per_seed"} <= set(c) and len(c["per_seed"]) == 2
            assert c["mean"] == pytest.approx(statistics.fmean(c["per_seed"])) and c["ci_low"] <= c["ci_high"]
    assert len(rows["dpo"]["vs_sft"]["per_seed"]) == 2 and rows["dpo"]["implicit_vs_dpo"] is None
    table = (out / "sweep_results.md").read_text()
    assert "| L1+3-g0.25 | 1,3 | 2 | 0.25 |" in table and "seeds: " in table and "interval over training runs" in table
    assert "Implicit-reward accuracy minus the same seed's DPO's" in table
    assert [line.split(" | ")[:2] for line in table.splitlines() if line.startswith("| L1+3-g0.25 | ")][1:] == [
        ["| L1+3-g0.25", "1"], ["| L1+3-g0.25", "3"], ["| L1+3-g0.25", "4 (final)"]]
    png = (out / "sweep_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    trainings.argvs = []
    assert sw.run_sweep(TINY_SEEDS, output_dir=str(out), train_only=True, progress=False) is None
    assert trainings.argvs == []  # everything finished: nothing retrained


def test_unbounded_scores_are_not_clipped():
    # A reward model's scores have no range: the difference's interval is the plain t-interval.
    got = sw.compare_over_seeds([[2.0, 3.0], [-1.0, 0.0]], null=0.0, versus="DPO", bounds=None)
    half = math.tan(math.pi * 0.475) * statistics.stdev([2.5, -0.5]) / math.sqrt(2)
    assert got["ci_low"] == pytest.approx(1.0 - half, abs=1e-9) and got["ci_high"] == pytest.approx(1.0 + half)
    assert got["verdict"] == "no detectable difference"


# ---------------------------------------------------------------- implicit-reward accuracy minus DPO's, by hand
# Three seeds, four held-out pairs, two layers (the last is final); per pair "1": the implicit reward prefers chosen.
CORRECT = {  # model: (layer 1, layer 2)
    "L1@seed0": ("1100", "1111"), "dpo@seed0": ("1000", "1100"),   # differences: 1/4 at layer 1, 2/4 at layer 2
    "L1@seed1": ("1110", "1011"), "dpo@seed1": ("1000", "0001"),   # 2/4, 2/4
    "L1@seed2": ("0101", "1110"), "dpo@seed2": ("0101", "0000"),   # 0, 3/4
}


def _seeded_summary(tmp_path, correct=True):
    from types import SimpleNamespace

    (tmp_path / "eval").mkdir(exist_ok=True)
    (tmp_path / "eval" / "judgments.jsonl").write_text("")  # no judged pairs: only the implicit reward is compared
    models = {name: {"accuracy": [statistics.fmean(map(int, layer)) for layer in layers], "margin": [0.0, 0.0],
                     **({"correct": list(layers)} if correct else {})} for name, layers in CORRECT.items()}
    sweep = SimpleNamespace(num_layers=lambda: 2, spec=SimpleNamespace(seeds=[0, 1, 2]), out=tmp_path,
                            arms={"dpo": Setting("dpo", [], 1.0), "L1": Setting("L1", [1], 0.5)},
                            manifest={"settings": {}}, base=SimpleNamespace(model=SimpleNamespace(gamma=0.5)),
                            base_model="tiny")
    results = {"confidence": 0.95, "judge": {"name": "rule"}, "generation": {},
               "prompts": {"prompts": 4, "split": "test", "source": "x"},
               "models": [{"name": n, "score": None} for n in CORRECT],
               "implicit_reward": {"layers": [1, 2], "num_layers": 2, "pairs": 4, "models": models}}
    return summarize_seeds(sweep, results)


def test_implicit_accuracy_minus_dpos_over_seeds_by_hand(tmp_path):
    summary = _seeded_summary(tmp_path)
    rows = {r["name"]: r for r in summary["rows"]}
    assert rows["dpo"]["implicit_vs_dpo"] is None
    layer1, layer2 = rows["L1"]["implicit_vs_dpo"]
    # t_{0.975, 2} in closed form: (2q - 1) * sqrt(2 / (4 q (1 - q))) = 4.3027
    t = (2 * 0.975 - 1) * math.sqrt(2 / (4 * 0.975 * 0.025))
    assert t_quantile(0.975, 2) == pytest.approx(t, abs=1e-9)
    # Layer 1: per seed 0.25, 0.5, 0 -> mean 0.25, squared deviations 0 + 0.0625 + 0.0625, s^2 = 0.0625.
    assert layer1["layer"] == 1 and layer1["per_seed"] == [0.25, 0.5, 0.0]
    assert layer1["mean"] == pytest.approx(0.25, abs=1e-12)
    half = t * 0.25 / math.sqrt(3)  # 0.6211
    assert layer1["ci_low"] == pytest.approx(0.25 - half, abs=1e-9)
    assert layer1["ci_high"] == pytest.approx(0.25 + half, abs=1e-9)
    assert layer1["verdict"] == "no detectable difference"
    # Layer 2: per seed 0.5, 0.5, 0.75 -> mean 7/12, squared deviations (1 + 1 + 4) / 144, s^2 = 3 / 144.
    assert layer2["per_seed"] == [0.5, 0.5, 0.75] and layer2["mean"] == pytest.approx(7 / 12, abs=1e-12)
    half = t * math.sqrt(3 / 144) / math.sqrt(3)  # 0.3586: the interval [0.2247, 0.9420] excludes 0
    assert layer2["ci_low"] == pytest.approx(7 / 12 - half, abs=1e-9)
    assert layer2["ci_high"] == pytest.approx(7 / 12 + half, abs=1e-9)
    assert layer2["verdict"] == "better than DPO" and layer2["prompts"] == [4, 4, 4]
    # The two-level bootstrap (seeds, then pairs) is the one of the per-pair differences.
    differences = [[1 - 1, 1 - 1, 1 - 0, 1 - 0], [1 - 0, 0 - 0, 1 - 0, 1 - 1], [1 - 0, 1 - 0, 1 - 0, 0 - 0]]
    boot = two_level_bootstrap(differences, resamples=2000, seed=0)
    assert (layer2["bootstrap_low"], layer2["bootstrap_high"]) == (boot.low, boot.high)
    assert -1.0 <= boot.low <= 7 / 12 <= boot.high <= 1.0
    # The arm's own accuracy at each layer over seeds stays as it was.
    assert rows["L1"]["implicit"][0]["per_seed"] == [0.5, 0.75, 0.5]
    assert rows["L1"]["implicit_trained_layers"] == [pytest.approx(7 / 12)]


def test_the_report_shows_the_implicit_difference_and_the_plot_its_panels(tmp_path):
    summary = _seeded_summary(tmp_path)
    table = format_seeds_markdown(summary)
    lines = [line for line in table.splitlines() if line.startswith("| L1 | ")]
    # the main row, then the implicit table's rows: the trained layer and the final one
    assert lines[1].startswith("| L1 | 1 | 58.3 [") and "| +25.0 [-37.1, +87.1] (boot. [" in lines[1]
    assert lines[1].endswith("seeds: +25.0, +50.0, +0.0 | no detectable difference |")
    assert lines[2].startswith("| L1 | 2 (final) | ") and lines[2].endswith("| better than DPO |")
    png = plot_sweep(summary, tmp_path / "plot.png").read_bytes()  # comparisons without judged pairs are left out
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_per_pair_correctness_there_is_no_implicit_difference(tmp_path):
    # results.json written before per-pair correctness was recorded: the accuracies are summarised, no difference.
    rows = {r["name"]: r for r in _seeded_summary(tmp_path, correct=False)["rows"]}
    assert rows["L1"]["implicit_vs_dpo"] is None and rows["L1"]["implicit"][1]["per_seed"] == [1.0, 0.75, 0.75]
    assert "Implicit-reward accuracy minus" not in format_seeds_markdown(_seeded_summary(tmp_path, correct=False))


# ---------------------------------------------------------------- the accelerator switch
@pytest.mark.parametrize("accelerator, trainer, device", [("gpu", "gpu", "cuda"), ("cpu", "cpu", "cpu"),
                                                          ("auto", "auto", "auto")])
def test_the_accelerator_switch_reaches_the_child_fits_and_the_evaluation(tmp_path, monkeypatch, accelerator, trainer,
                                                                          device):
    spec = sw.load_spec(_write(tmp_path, {**BASE, "output_dir": str(tmp_path / "out"), "seeds": [0],
                                          "fit": {"trainer": {"max_steps": 2}}, "accelerator": accelerator}))
    assert spec.fit == {"trainer": {"max_steps": 2, "accelerator": trainer}}
    sweep = sw.Sweep(spec)
    argv = sweep.fit_argv(sweep.runs["L1/seed0"])
    configs = [argv[i + 1] for i, a in enumerate(argv) if a == "--config"]
    # The child reads fit_overrides.yaml after the base config (tiny.yaml says cpu): the switch wins.
    assert yaml.safe_load(Path(configs[1]).read_text())["trainer"]["accelerator"] == trainer
    assert sw._parse_fit_config(configs).trainer.accelerator == trainer

    # The evaluation (generation and implicit reward) gets the device.
    seen = {}

    class Stop(Exception):
        pass

    def fake_evaluate(models, out, **kwargs):
        seen.update(kwargs)
        raise Stop

    ev = sw.evaluation
    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    monkeypatch.setattr(sw.Sweep, "is_trained", lambda self, name: True)
    monkeypatch.setattr(sw.Sweep, "num_layers", lambda self: 4)
    with pytest.raises(Stop):
        sweep.evaluate(progress=False)
    assert seen["generation"].device == device


def test_without_the_switch_the_fit_config_and_generation_device_apply(tmp_path):
    spec = sw.load_spec(_write(tmp_path, {**BASE, "output_dir": str(tmp_path / "out"),
                                          "evaluate": {"generation": {"device": "cpu"}}}))
    assert spec.fit == {} and spec.evaluate.generation.device == "cpu"
    assert sw._parse_fit_config(sw.Sweep(spec).common_configs).trainer.accelerator == "cpu"  # tiny.yaml's


@pytest.mark.parametrize("extra, message", [
    ({"accelerator": "tpu"}, r"accelerator='tpu'; choose one of cpu, gpu, auto"),
    ({"accelerator": "gpu", "fit": {"trainer": {"accelerator": "cpu"}}},
     r"accelerator='gpu' and fit.trainer.accelerator='cpu' disagree; keep one of them"),
])
def test_a_bad_accelerator_names_the_key_and_the_fix(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        sw.load_spec(_write(tmp_path, {**BASE, **extra}))


def test_a_missing_matplotlib_skips_the_sweep_plot_with_the_install_hint(tmp_path, monkeypatch, capsys):
    from lit_idpo.sweep import report as sweep_report

    def no_matplotlib(summary, path):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(sweep_report, "plot_sweep", no_matplotlib)
    assert sweep_report.write_sweep_plot({}, tmp_path / "sweep_plot.png") is None
    assert not (tmp_path / "sweep_plot.png").exists()
    assert "pip install 'lit-idpo[plot]'" in capsys.readouterr().err
