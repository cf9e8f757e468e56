"""``benchmarks/rescore_published.py``: its core on a hand-made response set, and the published numbers.

The expected values of the hand-made set were worked out by hand (each response read against both
readings, then the win scores, means and Student-t intervals computed on paper with t_{0.975, 1} = 12.7062
from a printed table); none comes from running the code under test. The published check compares the old
reading with the numbers the studies' RESULTS.md tables print.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
T_975_1 = 12.7062  # Student-t, 0.975 quantile, 1 degree of freedom (printed tables)


@pytest.fixture(scope="module")
def rescore():
    spec = importlib.util.spec_from_file_location("rescore_published", ROOT / "benchmarks" / "rescore_published.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while the module loads
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


P1, P2, P3, P4 = (f"What is {q}? Answer briefly." for q in ("962 + 3", "6 * 7", "54 * 10", "8 - 3"))
CUT = "54 * 10 = 540. 54 * 10 = 540. 54 * 10 = 5"  # stopped at the limit: new reading right, old reads 5
# (prompt, response, stopped); per run, the verdicts (asked_expression, last_equation) read by hand.
RUNS = {
    "X_seed0": [(P1, "962 + 3 = 965\n965 + 3 = 968", "eos"),  # new 1, old 0 (reads 968)
                (P2, "6 * 7 = 42", "eos"),  # 1, 1
                (P3, CUT, "length"),  # 1, 0
                (P4, "8 - 3 = 5", "eos")],  # 1, 1
    "dpo_seed0": [(P1, "962 + 3 = 965", "eos"),  # 1, 1
                  (P2, "6 * 7 = 41. Sorry, 6 * 7 = 42.", "eos"),  # new 0 (contradiction), old 1
                  (P3, "54 * 10 = 540", "eos"),  # 1, 1
                  (P4, "8 - 3 = 4", "eos")],  # 0, 0
    "X_seed1": [(P1, "962 + 3 = 968", "eos"), (P2, "6 * 7 = 42", "eos"),  # 0, 0; 1, 1
                (P3, "54 * 10 = 540", "eos"), (P4, "8 - 3 = 4", "eos")],  # 1, 1; 0, 0
    "dpo_seed1": [(P1, "962 + 3 = 965", "eos"), (P2, "6 * 7 = 42", "eos"),  # 1, 1; 1, 1
                  (P3, CUT, "length"), (P4, "8 - 3 = 5", "eos")],  # 1, 0; 1, 1
    "sft": [(P1, "962 + 3 = 965", "eos"), (P2, "I don't know.", "eos"),  # 1, 1; 0, 0
            (P3, "540", "eos"), (P4, "8 - 3 = 5", "eos")],  # 1, 1; 1, 1
}


@pytest.fixture()
def toy(rescore, tmp_path, monkeypatch):
    folder = tmp_path / "toy" / "responses"
    folder.mkdir(parents=True)
    for name, rows in RUNS.items():
        lines = [json.dumps({"prompt_index": i, "prompt": p, "response": r, "new_tokens": 48 if s == "length" else 10,
                             "stopped": s, "score": None}) for i, (p, r, s) in enumerate(rows)]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(rescore, "BENCH", tmp_path)
    study = rescore.Study("toy", "toy", ("toy",), ("dpo", "X"), (0, 1), "toy")
    runs = rescore.load_runs(study, {P2: 42})
    return {r["arm"]: r for r in rescore.arm_rows(study, runs)}


def test_audit_counts(toy):
    x, dpo, sft = toy["X"], toy["dpo"], toy["sft"]
    assert (x["responses"], x["truncated"], x["truncated_share"]) == (8, 1, 0.125)
    assert x["mean_new_tokens"] == pytest.approx((7 * 10 + 48) / 8)
    assert x["readings_disagree"] == 2 and x["right_only_under"] == {"asked_expression": 2, "last_equation": 0}
    assert dpo["readings_disagree"] == 2 and dpo["right_only_under"] == {"asked_expression": 1, "last_equation": 1}
    assert (sft["responses"], sft["readings_disagree"]) == (4, 0)


def test_accuracy_over_seeds(toy):
    new = toy["X"]["readings"]["asked_expression"]["accuracy"]  # seeds 4/4, 2/4: mean 0.75, s = 0.35355
    assert new["per_seed"] == [1.0, 0.5] and new["mean"] == 0.75
    assert new["ci_low"] == pytest.approx(0.75 - T_975_1 * 0.25, abs=1e-3)  # half-width t * s / sqrt(2) = t / 4
    assert new["ci_high"] == pytest.approx(0.75 + T_975_1 * 0.25, abs=1e-3)
    assert toy["X"]["readings"]["last_equation"]["accuracy"]["per_seed"] == [0.5, 0.5]
    assert toy["dpo"]["readings"]["last_equation"]["accuracy"]["per_seed"] == [0.75, 0.75]
    sft = toy["sft"]["readings"]["asked_expression"]["accuracy"]  # one run: Wilson over its 4 prompts
    assert sft["mean"] == 0.75 and sft["ci_method"] == "wilson"


def test_win_rates_and_verdicts(toy):
    new, old = toy["X"]["readings"]["asked_expression"], toy["X"]["readings"]["last_equation"]
    # New reading, seed 0: (1/2, 1, 1/2, 1) -> 0.75; seed 1: (0, 1/2, 1/2, 0) -> 0.25. Half-width 12.7 * 0.25:
    # the interval is clipped to [0, 1] and contains 50 %.
    assert new["vs_dpo"]["per_seed"] == [0.75, 0.25] and new["vs_dpo"]["mean"] == 0.5
    assert (new["vs_dpo"]["ci_low"], new["vs_dpo"]["ci_high"]) == (0.0, 1.0)
    assert new["vs_dpo"]["verdict"] == "no detectable difference"
    assert new["accuracy_vs_dpo"]["per_seed"] == [0.5, -0.5] and new["accuracy_vs_dpo"]["mean"] == 0.0
    # Old reading: both seeds (0, 1/2, 0, 1) and (0, 1/2, 1, 0) -> 0.375; no spread, so the interval is the point.
    assert old["vs_dpo"]["per_seed"] == [0.375, 0.375]
    assert old["vs_dpo"]["ci_high"] == pytest.approx(0.375) and old["vs_dpo"]["verdict"] == "worse than DPO"
    assert old["accuracy_vs_dpo"]["mean"] == pytest.approx(-0.25)  # win rate = 50 % + difference / 2
    # Against SFT (the same untrained run for both seeds), old reading: (0, 1, 0, 1/2) and (0, 1, 1/2, 0).
    assert old["vs_sft"]["per_seed"] == [0.375, 0.375]
    # DPO against SFT, new reading: (1/2, 1/2, 1/2, 0) -> 0.375 and (1/2, 1, 1/2, 1/2) -> 0.625.
    assert toy["dpo"]["readings"]["asked_expression"]["vs_sft"]["per_seed"] == [0.375, 0.625]


def test_truncated_pairs_left_out(toy):
    # P3 is cut in X's seed 0 and in DPO's seed 1, so each seed keeps P1, P2, P4.
    new, old = toy["X"]["readings"]["asked_expression"], toy["X"]["readings"]["last_equation"]
    assert new["vs_dpo_no_truncated"]["prompts"] == [3, 3]
    assert new["vs_dpo_no_truncated"]["per_seed"] == pytest.approx([2.5 / 3, 0.5 / 3])  # (1/2, 1, 1), (0, 1/2, 0)
    assert old["vs_dpo_no_truncated"]["per_seed"] == pytest.approx([0.5, 0.5 / 3])  # (0, 1/2, 1), (0, 1/2, 0)
    assert new["accuracy_vs_dpo_no_truncated"]["per_seed"] == pytest.approx([2 / 3, -2 / 3])


def test_answer_must_agree_with_the_test_set(rescore):
    with pytest.raises(ValueError, match="test set says 41"):
        rescore.true_answer(P2, {P2: 41})


def test_published_old_reading_reproduced(rescore, tmp_path):
    out = rescore.main(["--out", str(tmp_path)])
    studies = out["studies"]
    for key, study in studies.items():
        assert study["published_check"]["checked"] > 40 and study["published_check"]["mismatches"] == [], key
    # The headline the seed study published (benchmarks/seed_study_l21/RESULTS.md), typed from that table.
    rows = {r["arm"]: r["readings"]["last_equation"] for r in studies["seed_study_6"]["arms"]}
    pct = lambda c, key: round(100 * c[key], 1)  # noqa: E731
    assert [pct(rows["L21"]["vs_dpo"], k) for k in ("mean", "ci_low", "ci_high")] == [53.1, 50.8, 55.4]
    assert [pct(rows["L21"]["accuracy_vs_dpo"], k) for k in ("mean", "ci_low", "ci_high")] == [6.2, 1.5, 10.8]
    assert pct(rows["dpo"]["accuracy"], "mean") == 48.6 and pct(rows["L21"]["accuracy"], "mean") == 54.8
    # 5 seeds (benchmarks/seed_study/RESULTS.md): layer 10 + early exit, and the reproduction's layer 27.
    five = {r["arm"]: r["readings"]["last_equation"] for r in studies["seed_study"]["arms"]}
    assert [pct(five["L10+exit0.5"]["vs_dpo"], k) for k in ("mean", "ci_low", "ci_high")] == [39.6, 35.5, 43.7]
    single = {r["arm"]: r["readings"]["last_equation"] for r in studies["reproduction"]["arms"]}
    assert [pct(single["L27"]["vs_dpo"], k) for k in ("mean", "ci_low", "ci_high")] == [44.8, 40.7, 48.8]
    # DPO's truncation over six seeds, as issue 19 counted it (224 of 1200) and layer 21's (78 of 1200).
    audit = {r["arm"]: r for r in studies["seed_study_6"]["arms"]}
    assert (audit["dpo"]["truncated"], audit["L21"]["truncated"]) == (224, 78)
    assert (tmp_path / "RESULTS.md").read_text().count("reproduced exactly") >= 4
