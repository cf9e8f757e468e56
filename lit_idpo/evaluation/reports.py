"""The evaluation as markdown: pairwise win rates, per-model scores, implicit-reward accuracy per layer."""

from __future__ import annotations

from typing import Any, Mapping, Optional


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def format_markdown(results: Mapping[str, Any]) -> str:
    """The evaluation as markdown: pairwise win rates, per-model scores, implicit-reward accuracy."""
    lines = []
    prompts = results["prompts"]
    judge = results["judge"]
    lines.append(f"Prompts: {prompts['prompts']} from split `{prompts['split']}` of `{prompts['source']}`; "
                 f"judge: `{judge['name']}`" + (f" ({judge['model']})" if judge.get("model") else "") +
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
    scored = [m for m in results["models"] if m.get("score") is not None]
    if scored:
        label = "accuracy (%)" if judge["name"] == "rule" else "mean score"
        lines += ["", f"| model | {label} | {round(100 * results.get('confidence', 0.95))} % CI | mean new tokens | "
                      f"hit max_new_tokens |", "|---|---:|---:|---:|---:|"]
        for m in scored:
            s = m["score"]
            fmt = _pct if judge["name"] == "rule" else (lambda x: f"{x:.4f}")
            ci = f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]" if s.get("ci_low") is not None else "n/a"
            lines.append(f"| {m['name']} | {fmt(s['mean'])} | {ci} | {m['generation']['mean_new_tokens']:.1f} | "
                         f"{m['generation']['stopped_at_max_new_tokens']} |")
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


def _generation_line(g: Mapping[str, Any]) -> str:
    mode = (f"sampling (T={g['temperature']}, top_p={g['top_p']}, top_k={g['top_k']}, seed={g['seed']})"
            if g["do_sample"] else "greedy")
    return f"{mode}, max_new_tokens={g['max_new_tokens']}"
