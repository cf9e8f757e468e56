"""The evaluation as markdown: pairwise win rates, per-model scores and truncation, implicit-reward accuracy per layer.

On instruction-task prompts, a table of the pass rate per constraint type per model follows the per-model table.

The judge line names the rule judge's answer reading; the per-model table gives each model's share of
responses stopped at ``max_new_tokens`` (with the warning above 5 %) and, with the rule judge, how many
responses the two answer readings score differently.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def format_markdown(results: Mapping[str, Any]) -> str:
    """The evaluation as markdown: pairwise win rates, per-model scores, implicit-reward accuracy."""
    lines = []
    prompts = results["prompts"]
    # The answer reading is the arithmetic task's: named only where the responses were read with it (or where
    # nothing was generated to tell, e.g. an older results file).
    arithmetic = not results.get("models") or any(m.get("readings") for m in results["models"])
    judge = results["judge"]
    lines.append(f"Prompts: {prompts['prompts']} from split `{prompts['split']}` of `{prompts['source']}`; "
                 f"judge: `{judge['name']}`" + (f" ({judge['model']})" if judge.get("model") else "") +
                 (f" (arithmetic answer reading: `{judge['extraction']}`)" if judge.get("extraction") and arithmetic
                  else "") +
                 (f" (verifier: `{judge['verifier']}`)" if judge.get("verifier") else "") +
                 f"; generation: {_generation_line(results['generation'])}.")
    if results.get("pairs"):
        conf = round(100 * results["pairs"][0]["confidence"])
        lines += ["", f"| A | B | prompts | A wins / ties / B wins (judgments, both orders) | win rate of A (%) | "
                      f"{conf} % CI | bootstrap CI | no verdict | A shown first preferred (%) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["pairs"]:
            lines.append(f"| {r['first']} | {r['second']} | {r['prompts']} | "
                         f"{r['wins']} / {r['ties']} / {r['losses']} | "
                         f"{_pct(r['win_rate'])} | [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
                         f"{'' if r['ci_method'] == 't' else ' (Wilson)'} | "
                         f"[{_pct(r['bootstrap_low'])}, {_pct(r['bootstrap_high'])}] | {r['invalid']} | "
                         f"{_pct(r['first_shown_preference'])} |")
        lines += ["", f"CI: {results['ci_method']}."]
    if results.get("models"):
        lines += [""] + _model_table(results)
    implicit = results.get("implicit_reward") or {}
    if implicit.get("models"):
        layers = implicit["layers"]
        names = [f"final ({l})" if l == implicit["num_layers"] else str(l) for l in layers]
        lines += ["", f"Implicit-reward accuracy (%) on {implicit['pairs']} held-out pairs, per layer "
                      f"(reference: `{implicit['reference']}`):", "",
                  "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(layers)]
        for name, values in implicit["models"].items():
            lines.append(f"| {name} | " + " | ".join(_pct(a) for a in values["accuracy"]) + " |")
    return "\n".join(lines)


def _model_table(results: Mapping[str, Any]) -> List[str]:
    """Per model: score with its interval, length, share stopped at max_new_tokens, reading disagreements."""
    judge, models = results["judge"], results["models"]
    scored = any(m.get("score") is not None for m in models)
    readings = any(m.get("readings") for m in models)
    fmt = _pct if judge["name"] == "rule" else (lambda x: f"{x:.4f}")
    header = ["model"]
    if scored:
        header += ["accuracy (%)" if judge["name"] == "rule" else "mean score",
                   f"{round(100 * results.get('confidence', 0.95))} % CI"]
    words = all(m.get("responses") for m in models)
    header += (["mean words"] if words else []) + ["mean new tokens", "hit max_new_tokens"]
    if readings:
        header += ["readings disagree (right only under asked_expression / last_equation)"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for m in models:
        g, s, row = m["generation"], m.get("score"), [m["name"]]
        if scored:
            ci = f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]" if s and s.get("ci_low") is not None else "n/a"
            row += [fmt(s["mean"]) if s else "n/a", ci]
        share = g.get("stopped_at_max_new_tokens_share")
        row += ([f"{m['responses']['mean_words']:.1f}"] if words else []) + [f"{g['mean_new_tokens']:.1f}",
                f"{g['stopped_at_max_new_tokens']}" + (f" ({_pct(share)} %)" if share is not None else "")]
        if readings:
            r = m.get("readings")
            only = r["right_only_under"] if r else {}
            row += [f"{r['disagree']} of {r['responses']} ({only.get('asked_expression', 0)} / "
                    f"{only.get('last_equation', 0)})" if r else "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    warning = (results.get("truncation") or {}).get("warning")
    if warning:
        lines += ["", f"**Warning:** {warning}."]
    return lines + _constraint_table(models)


def _constraint_table(models) -> List[str]:
    """Instruction-task prompts: per model and constraint type, the pass rate (whole verifier) and, in
    brackets, the share satisfying that constraint's own check."""
    profiles = [m.get("responses", {}).get("constraints") for m in models]
    if not profiles or not all(profiles):
        return []
    types = sorted({t for p in profiles for t in p})
    asked = {t: next(p[t]["responses"] for p in profiles if t in p) for t in types}
    lines = ["", "Pass rate (%) per constraint type, over the prompts that ask it (in brackets: the share "
                 "satisfying that constraint, whatever the rest of the verifier says):", "",
             "| model | " + " | ".join(f"{t} (n={asked[t]})" for t in types) + " |", "|---|" + "---:|" * len(types)]
    for m, p in zip(models, profiles):
        cells = [f"{_pct(p[t]['pass_rate'])} ({_pct(p[t]['satisfied_rate'])})" if t in p else "n/a" for t in types]
        lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    return lines


def _generation_line(g: Mapping[str, Any]) -> str:
    mode = (f"sampling (T={g['temperature']}, top_p={g['top_p']}, top_k={g['top_k']}, seed={g['seed']})"
            if g["do_sample"] else "greedy")
    return f"{mode}, max_new_tokens={g['max_new_tokens']}"
