"""The sweep's report: the markdown table and the plot of win rates against layer position and K.

Both read the summary that :meth:`lit_idpo.sweep.Sweep.summarize` (one run per setting) or
:func:`lit_idpo.sweep.seeds.summarize_seeds` (a ``seeds`` list: intervals over training runs) writes to
``sweep_results.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from lit_idpo.storage import atomic_write
from lit_idpo.sweep.spec import DPO, SFT

__all__ = ["format_seeds_markdown", "format_sweep_markdown", "plot_sweep", "write_sweep_plot"]


def _cell(p: Optional[Mapping[str, Any]]) -> str:
    if p is None:
        return "n/a"
    wilson = " W" if p["ci_method"] != "t" else ""
    return f"{100 * p['win_rate']:.1f} [{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}]{wilson}"


def _wtl(p: Optional[Mapping[str, Any]]) -> str:
    return "n/a" if p is None else f"{p['wins']}/{p['ties']}/{p['losses']}"


def _head(r: Mapping[str, Any]) -> str:
    # The first columns of a run's row: name, layers, K, gamma.
    return f"| {r['name']} | {','.join(map(str, r['layers'])) or '-'} | {r['k']} | {r['gamma']:g} | "


def _tail(r: Mapping[str, Any]) -> str:
    # The last columns of a run's row: implicit-reward accuracy at its layers, fit time.
    return (f"{', '.join(_pct(x) for x in r['implicit_trained_layers']) or '-'} | "
            f"{r['fit_seconds'] if r['fit_seconds'] is not None else 'n/a'} |")


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _seed_cell(c: Optional[Mapping[str, Any]], signed: bool = False) -> str:
    # mean [t-interval over seeds] (two-level bootstrap), then the per-seed values
    if c is None:
        return "-"
    fmt = (lambda x: "n/a" if x is None else f"{100 * x:+.1f}") if signed else _pct
    interval = "no interval" if c["ci_low"] is None else f"[{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]"
    boot = "" if c.get("bootstrap_low") is None else f" (boot. [{fmt(c['bootstrap_low'])}, {fmt(c['bootstrap_high'])}])"
    return f"{fmt(c['mean'])} {interval}{boot}; seeds: {', '.join(fmt(v) for v in c['per_seed'])}"


def _judge_label(judge: Mapping[str, Any]) -> str:
    """The judge as reports name it; the rule judge with its answer reading (issue 19: part of the result)."""
    label = f"`{judge['name']}`"
    return label + (f" (arithmetic answer reading `{judge['extraction']}`)" if judge.get("extraction") else "")


def format_seeds_markdown(summary: Mapping[str, Any]) -> str:
    """The table of a sweep over seeds: per arm and comparison, mean over seeds, intervals, per-seed values, verdict."""
    conf = round(100 * summary["confidence"])
    seeds = summary["seeds"]
    is_rule = summary["judge"]["name"] == "rule"
    lines = [f"Base model `{summary['base_model']}` ({summary['num_layers']} layers); {summary['prompts']['prompts']} "
             f"prompts from split `{summary['prompts']['split']}` of `{summary['prompts']['source']}`; judge "
             f"{_judge_label(summary['judge'])}; {len(seeds)} training seeds {seeds} (each arm trained once per seed, "
             f"paired with the same seed's DPO). Each cell: mean over seeds of the per-seed values (%), its {conf} % "
             f"interval over training runs (Student-t over the seeds), the two-level bootstrap (seeds, then "
             f"prompts) in parentheses, and the per-seed values. The verdict reads the t-interval.", ""]
    score = "accuracy (%)" if is_rule else "score"
    lines.append(f"| run | layers | K | gamma | win rate vs DPO | verdict vs DPO | win rate vs SFT | {score} | "
                 f"{score} minus DPO's | verdict ({score} vs DPO) | implicit acc. at its layers (%) | fit (s) |")
    lines.append("|---|---|---:|---:|---|---|---|---|---|---|---:|---:|")
    for r in summary["rows"]:
        vs_dpo, acc = r["vs_dpo"], r["accuracy_vs_dpo"]
        own = _seed_cell(r["score"]) if is_rule else ("-" if r["score"] is None else f"{r['score']['mean']:.4f}")
        lines.append(_head(r) + f"{_seed_cell(vs_dpo)} | {vs_dpo['verdict'] if vs_dpo else '-'} | "
                     f"{_seed_cell(r['vs_sft'])} | {own} | {_seed_cell(acc, signed=True) if is_rule else '-'} | "
                     f"{acc['verdict'] if acc and is_rule else '-'} | " + _tail(r))
    lines += _implicit_table(summary)
    lines += ["", f"CI method: {summary['ci_method']}."]
    return "\n".join(lines)


def _implicit_table(summary: Mapping[str, Any]) -> List[str]:
    # Implicit-reward accuracy minus the same seed's DPO's, at each arm's trained layers and at the final layer.
    L = summary["num_layers"]
    rows = [r for r in summary["rows"] if r.get("implicit_vs_dpo")]
    if not rows:
        return []
    lines = ["", f"Implicit-reward accuracy minus the same seed's DPO's (points), on the same held-out pairs, at each "
                 f"run's trained layers and the final layer ({L}); the interval is over training runs, the bootstrap "
                 f"resamples seeds, then pairs.", "",
             "| run | layer | implicit acc. (%) | minus DPO's (points) | verdict |", "|---|---:|---|---|---|"]
    for r in rows:
        own = {e["layer"]: e for e in r.get("implicit") or []}
        diff = {e["layer"]: e for e in r["implicit_vs_dpo"]}
        for layer in dict.fromkeys(r["layers"] + [L]):
            if layer in diff:
                name = f"{layer} (final)" if layer == L else str(layer)
                lines.append(f"| {r['name']} | {name} | {_seed_cell(own.get(layer))} | "
                             f"{_seed_cell(diff[layer], signed=True)} | {diff[layer]['verdict']} |")
    return lines


def format_sweep_markdown(summary: Mapping[str, Any]) -> str:
    """The sweep table: one row per run, win rates with intervals against DPO and SFT, scores, fit time (with a
    ``seeds`` list: :func:`format_seeds_markdown`)."""
    if summary.get("seeds"):
        return format_seeds_markdown(summary)
    conf = round(100 * summary["confidence"])
    is_rule = summary["judge"]["name"] == "rule"
    score_label = "accuracy (%)" if is_rule else "mean score"
    lines = [f"Base model `{summary['base_model']}` ({summary['num_layers']} layers); {summary['prompts']['prompts']} "
             f"prompts from split `{summary['prompts']['split']}` of `{summary['prompts']['source']}`; judge "
             f"{_judge_label(summary['judge'])}; win rate (%) of the row's model with its {conf} % interval "
             f"(t over prompts; W: Wilson, all prompts scored alike); W/T/L counts judgments in both orders.", ""]
    lines.append(f"| run | layers | K | gamma | vs DPO | W/T/L vs DPO | vs SFT | W/T/L vs SFT | {score_label} | "
                 f"implicit acc. final (%) | implicit acc. at its layers (%) | fit (s) |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def fmt_score(s):
        if not s:
            return "n/a"
        return f"{100 * s['mean']:.1f}" if is_rule else f"{s['mean']:.4f}"

    sft_score = summary.get("sft_score")
    if sft_score:
        lines.append(f"| sft (untrained) | - | - | - | - | - | - | - | {fmt_score(sft_score)} | - | - | - |")
    for r in summary["rows"]:
        is_dpo = r["name"] == DPO
        lines.append(_head(r) + f"{'-' if is_dpo else _cell(r['vs_dpo'])} | "
                     f"{'-' if is_dpo else _wtl(r['vs_dpo'])} | {_cell(r['vs_sft'])} | {_wtl(r['vs_sft'])} | "
                     f"{fmt_score(r['score'])} | {_pct(r['implicit_final'])} | " + _tail(r))
    lines += ["", f"CI method: {summary['ci_method']}."]
    return "\n".join(lines)


def _centre(p: Mapping[str, Any]) -> float:
    # One run per setting: the win rate over prompts; over seeds: the mean of the per-seed win rates.
    return p["win_rate"] if "win_rate" in p else p["mean"]


COLOURS = {DPO: "tab:blue", SFT: "tab:orange"}


def _draw(ax, x: float, p: Optional[Mapping[str, Any]], colour: str, marker: str, label: Optional[str] = None,
          scale: float = 100.0) -> None:
    # One comparison at x: its centre with the interval as an error bar, and (over seeds) each seed's value.
    if p is None:
        return
    y = scale * _centre(p)
    err = None if p["ci_low"] is None else [[y - scale * p["ci_low"]], [scale * p["ci_high"] - y]]
    ax.errorbar([x], [y], yerr=err, fmt=marker, color=colour, capsize=4, label=label)
    if "per_seed" in p:
        ax.scatter([x] * len(p["per_seed"]), [scale * v for v in p["per_seed"]], s=10, color=colour, alpha=0.45,
                   marker=marker, linewidths=0)


def _seed_panels(axes, summary: Mapping[str, Any], rows: List[Mapping[str, Any]], markers: Mapping[float, str]) -> None:
    # Over seeds, one x position per arm: win rate vs DPO, answer accuracy minus DPO's, implicit-reward accuracy
    # minus DPO's at the arm's trained layers; each with its per-seed values and the mean with its interval.
    is_rule = summary["judge"]["name"] == "rule"
    win, acc, imp = axes
    for j, r in enumerate(rows):
        marker = markers[r["gamma"]]
        _draw(win, j, r["vs_dpo"], COLOURS[DPO], marker)
        _draw(acc, j, r["accuracy_vs_dpo"], COLOURS[DPO], marker, scale=100.0 if is_rule else 1.0)
        at = {e["layer"]: e for e in r.get("implicit_vs_dpo") or []}
        trained = [layer for layer in r["layers"] if layer in at]
        for t, layer in enumerate(trained):
            x = j + (t - (len(trained) - 1) / 2) * 0.3
            _draw(imp, x, at[layer], COLOURS[DPO], marker)
            imp.annotate(f"L{layer}", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                         textcoords="offset points", ha="center", fontsize=7, color="dimgrey")
    win.axhline(50, color="black", linewidth=0.8)
    conf = round(100 * summary["confidence"])
    win.set_ylabel(f"win rate vs DPO (%), {conf} % interval over seeds")
    acc.set_ylabel(("answer accuracy" if is_rule else "score") + " minus DPO's" + (" (points)" if is_rule else ""))
    imp.set_ylabel("implicit-reward acc. minus DPO's (points)\nat the trained layers")
    for ax in axes:
        if ax is not win:
            ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.grid(alpha=0.3)


def write_sweep_plot(summary: Mapping[str, Any], path: Path) -> Optional[Path]:
    """:func:`plot_sweep`, or None and a note on stderr when matplotlib (the optional ``[plot]`` extra) is missing:
    the sweep's tables are written either way, so a finished sweep does not end in a traceback."""
    try:
        return plot_sweep(summary, path)
    except ImportError:
        print(f"lit-idpo sweep: {path.name} not written: matplotlib is not installed (pip install 'lit-idpo[plot]')",
              file=sys.stderr)
        return None


def plot_sweep(summary: Mapping[str, Any], path: Path) -> Path:
    """PNG: win rate (with interval) against layer position (K = 1 runs) and against K, versus DPO and SFT.

    Over seeds, each comparison is drawn as its per-seed values (small points) and the mean over seeds with the
    interval over training runs, and a second row gives, per setting, the win rate against DPO, the answer-accuracy
    difference to DPO and the implicit-reward-accuracy difference to DPO at the setting's trained layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in summary["rows"] if r["name"] != DPO]
    dpo = next((r for r in summary["rows"] if r["name"] == DPO), None)
    L = summary["num_layers"]
    seeded = bool(summary.get("seeds"))
    if seeded:
        fig = plt.figure(figsize=(13, 10))
        panels = fig.subplot_mosaic([["layer"] * 3 + ["k"] * 3, ["win"] * 2 + ["acc"] * 2 + ["imp"] * 2])
        axes = [panels["layer"], panels["k"]]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    gammas = sorted({r["gamma"] for r in rows})
    markers = dict(zip(gammas, "osD^v<>"))

    seen = set()
    ax = axes[0]
    for r in rows:
        if r["k"] != 1:
            continue
        for baseline, dx in ((DPO, -0.15), (SFT, 0.15)):
            label = f"vs {baseline.upper()} (gamma {r['gamma']:g})"
            _draw(ax, r["layers"][0] + dx, r[f"vs_{baseline}"], COLOURS[baseline], markers[r["gamma"]],
                 None if label in seen else label)
            seen.add(label)
    ax.set_xlabel(f"intermediate layer (of {L}; K = 1 runs)")
    ax.set_xlim(0.5, L + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    top = ax.secondary_xaxis("top", functions=(lambda x: x / L, lambda r: r * L))
    top.set_xlabel("relative depth")
    ax.axvline(L * 22 / 32, color="grey", linestyle=":", linewidth=1)
    ax.text(L * 22 / 32, 1, " 22/32", color="grey", fontsize=8, transform=ax.get_xaxis_transform(), va="bottom")

    ax = axes[1]
    seen = set()
    by_k: Dict[int, List[Dict[str, Any]]] = {}
    for r in rows:
        by_k.setdefault(r["k"], []).append(r)
    for k, group in by_k.items():
        width = 0.5 / max(1, len(group))
        for j, r in enumerate(group):
            centre = k + (j - (len(group) - 1) / 2) * width
            for baseline, dx in ((DPO, -0.06), (SFT, 0.06)):
                label = f"vs {baseline.upper()} (gamma {r['gamma']:g})"
                _draw(ax, centre + dx, r[f"vs_{baseline}"], COLOURS[baseline], markers[r["gamma"]],
                     None if label in seen else label)
                seen.add(label)
            ax.annotate("L" + "+".join(map(str, r["layers"])), (centre, 0), xycoords=("data", "axes fraction"),
                        xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7, color="dimgrey")
    ax.set_xticks(sorted(by_k))
    if by_k:
        ax.set_xlim(min(by_k) - 0.5, max(by_k) + 0.5)
    ax.set_xlabel("number of intermediate layers K (runs side by side)")
    for ax in axes:
        ax.axhline(50, color="black", linewidth=0.8)
        if dpo is not None and dpo.get("vs_sft"):
            ax.axhline(100 * _centre(dpo["vs_sft"]), color=COLOURS[SFT], linestyle="--", linewidth=0.8,
                       label="DPO vs SFT")
        ax.set_ylabel(f"win rate (%) with {round(100 * summary['confidence'])} % interval")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:  # below the axes: inside, "best" can still cover the run labels along the bottom
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(3, len(handles)))
    if seeded:
        _seed_panels([panels["win"], panels["acc"], panels["imp"]], summary, rows, markers)
    judge = _judge_label(summary["judge"]).replace("`", "")
    fig.suptitle(f"Intermediate DPO vs DPO and vs SFT: {summary['base_model']}, judge {judge}, "
                 f"{summary['prompts']['prompts']} prompts" + (
                     f"; {len(summary['seeds'])} seeds (small points: per seed; bars: mean and interval over "
                     f"training runs)" if summary.get("seeds") else ""), fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path
