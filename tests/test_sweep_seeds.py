"""lit-idpo sweep with ``seeds``: the interval over training runs and the two-level bootstrap against hand-computed
values, the verdict, the ``seeds`` key's checks, and configs/sweeps/tiny_seeds.yaml end to end (two seeds, two
settings, resuming)."""

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from lit_idpo import sweep as sw
from lit_idpo.errors import ConfigError
from lit_idpo.evaluation.statistics import bootstrap_interval, over_seeds, two_level_bootstrap

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
    assert len(rows["dpo"]["vs_sft"]["per_seed"]) == 2
    table = (out / "sweep_results.md").read_text()
    assert "| L1+3-g0.25 | 1,3 | 2 | 0.25 |" in table and "seeds: " in table and "interval over training runs" in table
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
