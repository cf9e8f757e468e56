"""``benchmarks/instructions_analysis.py`` on a scripted study whose every number is worked out by hand.

The scripted responses are the shipped held-out pairs' own responses: a pair's ``chosen`` passes the verifier
and its ``rejected`` fails (that is how the pairs were built), so the 71 prompts with a held-out pair get a known
verdict; the other 105 prompts get "No." (too few words: fails).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from lit_idpo.data.tasks import load_rows

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, PAIRED = 176, 71


@pytest.fixture(scope="module")
def analysis():
    spec = importlib.util.spec_from_file_location("instructions_analysis",
                                                  ROOT / "benchmarks" / "instructions_analysis.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _write(folder: Path, name: str, responses, stopped=None):
    lines = [{"prompt_index": i, "prompt": "", "response": r, "new_tokens": len(r.split()),
              "stopped": (stopped or {}).get(i, "eos"), "score": None} for i, r in enumerate(responses)]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def study(tmp_path):
    rows = load_rows("instructions", "test")
    pairs = {p["source_id"]: p for p in load_rows("instructions_onpolicy", "test")}
    chosen = [pairs[r["id"]]["chosen"] if r["id"] in pairs else "No." for r in rows]
    rejected = [pairs[r["id"]]["rejected"] if r["id"] in pairs else "No." for r in rows]
    folder = tmp_path / "study"
    (folder / "responses").mkdir(parents=True)
    first_paired = next(i for i, r in enumerate(rows) if r["id"] in pairs)
    _write(folder / "responses", "sft", rejected)
    _write(folder / "responses", "L21_seed1", chosen)
    _write(folder / "responses", "L21_seed2", chosen)
    _write(folder / "responses", "dpo_seed1", rejected)
    # seed 2: DPO passes the same prompts, but its first paired response was cut at the limit (so it fails)
    _write(folder / "responses", "dpo_seed2", chosen, stopped={first_paired: "length"})
    return folder


def test_the_scripted_study_gives_the_hand_worked_numbers(analysis, study):
    a = analysis.analyse(study, [1, 2])
    assert a["prompts"] == PROMPTS and a["verdicts_differing_from_stored_scores"] == 0  # no stored scores
    assert a["arms"]["sft"]["pass_rate"]["mean"] == 0.0
    assert a["arms"]["L21"]["pass_rate"]["per_seed"] == pytest.approx([PAIRED / PROMPTS] * 2)
    assert a["arms"]["dpo"]["pass_rate"]["per_seed"] == pytest.approx([0.0, (PAIRED - 1) / PROMPTS])
    assert a["arms"]["dpo"]["cut_share"]["per_seed"] == pytest.approx([0.0, 1 / PROMPTS])
    primary = a["versus_dpo"]["pre-registered (every constraint and a real, complete answer)"]
    # seed 1: L21 alone passes the 71 paired prompts, ties elsewhere; seed 2: L21 alone passes the one cut prompt
    expected = [(PAIRED + 0.5 * (PROMPTS - PAIRED)) / PROMPTS, (1 + 0.5 * (PROMPTS - 1)) / PROMPTS]
    assert primary["per_seed"] == pytest.approx(expected)
    cut_out = a["versus_dpo"]["prompts where either response was cut left out"]
    assert cut_out["prompts"] == [PROMPTS, PROMPTS - 1] and cut_out["per_seed"][1] == pytest.approx(0.5)
    # constraints only: the cut response satisfies its constraints, so seed 2 ties everywhere
    assert a["versus_dpo"]["constraints only (the real-answer gate and the cut ignored)"]["per_seed"][1] == 0.5
    assert a["versus_dpo"]["subset: the prompts that gave no held-out pair"]["per_seed"] == [0.5, 0.5]
    assert a["versus_dpo"]["subset: the prompts that gave a held-out pair"]["prompts"] == [PAIRED, PAIRED]
    assert a["disagreements"] == PAIRED + 1 and len(a["hand_sample"]) == analysis.HAND_SAMPLE


def test_the_script_writes_its_report_and_sample(analysis, study):
    assert analysis.main(["--folder", str(study), "--seeds", "1-2"]) == 0
    report = (study / "ANALYSIS.md").read_text()
    assert "| L21 | 40.3 [40.3, 40.3] |" in report  # 71 / 176, the same on both seeds
    assert report.count("## ") == 3 and "hand_check_sample.md" in report
    sample = (study / "hand_check_sample.md").read_text()
    assert sample.count("\n## ") == analysis.HAND_SAMPLE
