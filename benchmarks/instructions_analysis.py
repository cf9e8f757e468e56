"""The instruction-following study's analysis beyond the primary result (issue 22's pre-registration).

What: from the published responses of a seeded sweep on the instruction task (``responses/<arm>_seed<k>.jsonl``,
one line per held-out prompt in prompt order), each response verified again with the task's verifier
(:func:`lit_idpo.data.tasks.instructions.verify`; the count of verdicts that differ from the evaluation's stored
``score`` is reported, and should be 0), then:

- per arm: pass rate, share cut at ``max_new_tokens``, mean words and new tokens (mean over seeds, Student-t
  interval over seeds), and per constraint type the pass rate and the share satisfying that constraint's own
  check, with the arm's difference to the same seed's DPO per type;
- the arm against the same seed's DPO (win rate: per prompt 1 / 1/2 / 0, mean over prompts per seed, interval
  over seeds) under the pre-registered reading and two alternatives: prompts where either response was cut left
  out (the sensitivity row), and "constraints only" (every constraint satisfied, the real-answer gate and the cut
  ignored); and on subsets: prompts with no word-count constraint, the prompts that gave a held-out pair and the
  others (exploratory);
- a seeded sample of (seed, prompt) where the two arms' verdicts differ, written out for reading by hand.

How: ``python benchmarks/instructions_analysis.py`` (no model; seconds) reads
``benchmarks/instructions_confirmation/`` and writes ``ANALYSIS.md``, ``analysis.json`` and
``hand_check_sample.md`` there.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from lit_idpo.data.tasks import load_rows
from lit_idpo.data.tasks.instructions import verify
from lit_idpo.evaluation.statistics import compare_over_seeds, over_seeds

FOLDER = Path(__file__).resolve().parent / "instructions_confirmation"
SEEDS = tuple(range(200, 210))
BASELINE, ARM, UNTRAINED = "dpo", "L21", "sft"
WORD_COUNT_TYPES = frozenset({"max_words", "min_words"})
HAND_SAMPLE = 20


def _responses(folder: Path, name: str) -> List[dict]:
    path = folder / "responses" / f"{name.replace('@', '_')}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _verdicts(rows: Sequence[Mapping[str, Any]], responses: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Each response verified afresh: whole verdict, constraints-only verdict, per-type checks, cut, words."""
    out = []
    for line in responses:
        row, cut = rows[line["prompt_index"]], line["stopped"] == "length"
        result = verify(row, line["response"], cut)
        out.append({"passed": bool(result.passed), "constraints_only": all(ok for _, ok in result.constraints),
                    "checks": dict(result.constraints), "cut": cut, "words": len(line["response"].split()),
                    "new_tokens": line["new_tokens"], "stored": line.get("score")})
    return out


def _arm_summary(per_seed: List[List[Dict[str, Any]]], rows, confidence: float) -> Dict[str, Any]:
    def stat(values: List[float], bounds=None):  # one value (the untrained model): the mean, no interval
        return over_seeds(values, confidence, bounds)

    summary = {"pass_rate": stat([statistics.fmean(v["passed"] for v in s) for s in per_seed], (0.0, 1.0)),
               "cut_share": stat([statistics.fmean(v["cut"] for v in s) for s in per_seed], (0.0, 1.0)),
               "mean_words": stat([statistics.fmean(v["words"] for v in s) for s in per_seed]),
               "mean_new_tokens": stat([statistics.fmean(v["new_tokens"] for v in s) for s in per_seed])}
    types = sorted({c["type"] for r in rows for c in r["constraints"]})
    summary["by_type"] = {}
    for t in types:
        asked = [i for i, r in enumerate(rows) if any(c["type"] == t for c in r["constraints"])]
        summary["by_type"][t] = {
            "prompts": len(asked),
            "pass_rate": statistics.fmean(statistics.fmean(s[i]["passed"] for i in asked) for s in per_seed),
            "satisfied_rate": statistics.fmean(statistics.fmean(s[i]["checks"][t] for i in asked) for s in per_seed)}
    return summary


def _win(a: Dict[str, Any], b: Dict[str, Any], key: str) -> float:
    return 0.5 if a[key] == b[key] else float(a[key])


def _versus(arm: List[List[dict]], base: List[List[dict]], keep: Callable[[int, dict, dict], bool], key: str,
            confidence: float) -> Optional[Dict[str, Any]]:
    per_seed = [[_win(x, y, key) for i, (x, y) in enumerate(zip(a, b)) if keep(i, x, y)] for a, b in zip(arm, base)]
    if any(not s for s in per_seed):
        return None
    return compare_over_seeds(per_seed, null=0.5, versus="DPO", bounds=(0.0, 1.0), confidence=confidence)


def analyse(folder: Path, seeds: Sequence[int], arm: str = ARM, baseline: str = BASELINE,
            confidence: float = 0.95) -> Dict[str, Any]:
    rows = load_rows("instructions", "test")
    with_pair = {p["source_id"] for p in load_rows("instructions_onpolicy", "test")}
    names = {a: [f"{a}@seed{s}" for s in seeds] for a in (arm, baseline)}
    verdicts = {a: [_verdicts(rows, _responses(folder, n)) for n in names[a]] for a in names}
    verdicts[UNTRAINED] = [_verdicts(rows, _responses(folder, UNTRAINED))]
    stored_differ = sum(v["stored"] is not None and float(v["passed"]) != v["stored"]
                        for runs in verdicts.values() for run in runs for v in run)
    out: Dict[str, Any] = {"folder": str(folder), "seeds": list(seeds), "prompts": len(rows),
                           "verdicts_differing_from_stored_scores": stored_differ,
                           "arms": {a: _arm_summary(verdicts[a], rows, confidence)
                                    for a in (UNTRAINED, baseline, arm)}}
    types = sorted(out["arms"][arm]["by_type"])
    out["by_type_vs_dpo"] = {}
    for t in types:
        asked = [i for i, r in enumerate(rows) if any(c["type"] == t for c in r["constraints"])]
        per_seed = [[float(a[i]["passed"]) - float(b[i]["passed"]) for i in asked]
                    for a, b in zip(verdicts[arm], verdicts[baseline])]
        out["by_type_vs_dpo"][t] = compare_over_seeds(per_seed, null=0.0, versus="DPO", bounds=(-1.0, 1.0),
                                                      confidence=confidence)
    word_count = {i for i, r in enumerate(rows) if any(c["type"] in WORD_COUNT_TYPES for c in r["constraints"])}
    paired = {i for i, r in enumerate(rows) if r["id"] in with_pair}
    readings = {
        "pre-registered (every constraint and a real, complete answer)": (lambda i, x, y: True, "passed"),
        "prompts where either response was cut left out": (lambda i, x, y: not (x["cut"] or y["cut"]), "passed"),
        "constraints only (the real-answer gate and the cut ignored)": (lambda i, x, y: True, "constraints_only"),
        "subset: no word-count constraint": (lambda i, x, y: i not in word_count, "passed"),
        "subset: the prompts that gave a held-out pair": (lambda i, x, y: i in paired, "passed"),
        "subset: the prompts that gave no held-out pair": (lambda i, x, y: i not in paired, "passed"),
    }
    out["versus_dpo"] = {label: _versus(verdicts[arm], verdicts[baseline], keep, key, confidence)
                         for label, (keep, key) in readings.items()}
    disagreements = [(s, i) for k, s in enumerate(seeds) for i in range(len(rows))
                     if verdicts[arm][k][i]["passed"] != verdicts[baseline][k][i]["passed"]]
    out["disagreements"] = len(disagreements)
    out["hand_sample"] = sorted(random.Random(0).sample(disagreements, min(HAND_SAMPLE, len(disagreements))))
    return out


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _ci(stat: Mapping[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    if stat.get("ci_low") is None:
        return f"{scale * stat['mean']:.{digits}f}"
    low, high = scale * stat["ci_low"], scale * stat["ci_high"]
    return f"{scale * stat['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(a: Mapping[str, Any], arm: str = ARM, baseline: str = BASELINE) -> str:
    arms = [UNTRAINED, baseline, arm]
    lines = ["# Instruction-following study: analysis beyond the primary result", "",
             f"Written by `benchmarks/instructions_analysis.py` from `{Path(a['folder']).name}/responses/` "
             f"({a['prompts']} held-out prompts, seeds {a['seeds'][0]}-{a['seeds'][-1]}; the untrained model once). "
             f"Every response verified again: {a['verdicts_differing_from_stored_scores']} verdicts differ from the "
             f"evaluation's stored scores. Intervals: 95 % Student-t over the seeds' values.", "",
             "## Per arm", "",
             "| arm | pass rate (%) | cut at max_new_tokens (%) | mean words | mean new tokens |",
             "|---|---:|---:|---:|---:|"]
    for name in arms:
        s = a["arms"][name]
        lines.append(f"| {name} | {_ci(s['pass_rate'])} | {_ci(s['cut_share'])} | {_ci(s['mean_words'], 1.0)} | "
                     f"{_ci(s['mean_new_tokens'], 1.0)} |")
    types = sorted(a["arms"][arm]["by_type"])
    lines += ["", "## Per constraint type", "",
              "Pass rate (%) of the prompts asking that type (the whole verifier), mean over seeds; in brackets the "
              "share satisfying that constraint's own check, whatever the rest says. Last column: the arm minus the "
              "same seed's DPO in pass rate (points), interval over seeds (exploratory: one comparison per type).", "",
              f"| type | prompts | {' | '.join(arms)} | {arm} - {baseline} (points) |",
              "|---|---:|" + "---:|" * (len(arms) + 1)]
    for t in types:
        rates = [a["arms"][n]["by_type"][t] for n in arms]
        cells = [f"{_pct(r['pass_rate'])} ({_pct(r['satisfied_rate'])})" for r in rates]
        lines.append(f"| {t} | {a['arms'][arm]['by_type'][t]['prompts']} | {' | '.join(cells)} | "
                     f"{_ci(a['by_type_vs_dpo'][t])} |")
    lines += ["", f"## {arm} against the same seed's {baseline}", "",
              "Win rate (%): per prompt 1 when only the arm passes, 1/2 when both or neither do; mean over the prompts "
              "kept, then over seeds. The first row is the pre-registered primary result; the others are the "
              "sensitivity row and exploratory readings.", "",
              "| reading | prompts per seed | win rate (%) | 95 % CI | verdict |", "|---|---:|---:|---:|---|"]
    for label, r in a["versus_dpo"].items():
        if r is None:
            lines.append(f"| {label} | 0 | n/a | n/a | n/a |")
            continue
        kept = r["prompts"]
        count = str(kept[0]) if len(set(kept)) == 1 else f"{min(kept)}-{max(kept)}"
        lines.append(f"| {label} | {count} | {_pct(r['mean'])} | [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] | "
                     f"{r['verdict']} |")
    lines += ["", f"Verdicts that differ between the arms of a seed: {a['disagreements']} (of "
                  f"{len(a['seeds']) * a['prompts']}); {len(a['hand_sample'])} drawn (seed 0) for reading by hand: "
                  f"`hand_check_sample.md`."]
    return "\n".join(lines) + "\n"


def hand_sample_markdown(a: Mapping[str, Any], folder: Path, arm: str = ARM, baseline: str = BASELINE) -> str:
    rows = load_rows("instructions", "test")
    lines = ["# Hand check: a seeded sample of prompts where the two arms' verdicts differ", "",
             "Each entry: the prompt, its constraints, both responses with the verifier's verdict, per-constraint "
             "checks and whether the response was cut. Read by hand; labels and agreement in `HAND_CHECK.md`.", ""]
    for n, (seed, index) in enumerate(a["hand_sample"], 1):
        row = rows[index]
        lines += [f"## {n}. seed {seed}, prompt {index}", "", f"Prompt: {row['prompt']!r}", "",
                  f"Constraints: `{json.dumps(row['constraints'])}`", ""]
        for name in (arm, baseline):
            line = _responses(folder, f"{name}@seed{seed}")[index]
            result = verify(row, line["response"], line["stopped"] == "length")
            lines += [f"**{name}** (verifier: {'pass' if result.passed else 'fail'}; checks "
                      f"{dict(result.constraints)}; problem: {result.problem}; stopped: {line['stopped']}):", "",
                      "```", line["response"], "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=FOLDER, help="the study's published folder")
    parser.add_argument("--seeds", default=f"{SEEDS[0]}-{SEEDS[-1]}", help="first-last seed")
    args = parser.parse_args(argv)
    first, last = (int(x) for x in args.seeds.split("-"))
    result = analyse(args.folder, range(first, last + 1))
    (args.folder / "analysis.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.folder / "ANALYSIS.md").write_text(markdown(result), encoding="utf-8")
    (args.folder / "hand_check_sample.md").write_text(hand_sample_markdown(result, args.folder), encoding="utf-8")
    print((args.folder / "ANALYSIS.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
