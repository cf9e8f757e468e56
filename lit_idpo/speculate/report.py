"""The reports of ``lit-idpo speculate``: ``speculate.json``, a markdown table and a plot against the exit layer.

Reads the results dictionary that :func:`lit_idpo.speculate.speculate` builds; writes every file
atomically (:mod:`lit_idpo.storage`).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from lit_idpo.storage import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["format_markdown", "plot_png", "write_reports", "mismatch_message"]


def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_markdown(results: Dict[str, Any]) -> str:
    """A markdown table, one row per exit layer, with the model, data, settings and machine above it."""
    settings, machine, prompts = results["settings"], results["machine"], results["prompts"]
    lines = [
        f"## Early-exit speculative decoding: {results['model']}",
        "",
        f"{prompts['prompts']} prompts (split {prompts['split']!r} of {prompts['source']!r}), greedy, batch size 1, "
        f"up to {settings['max_new_tokens']} new tokens, {settings['num_assistant_tokens']} draft tokens per round, "
        f"{settings['dtype']} on {machine['device']} ({machine['device_name']}, {machine['torch_threads']} threads), "
        f"{results['num_layers']} layers.",
        "",
    ]
    decoding = settings["draft_decoding"]
    if decoding:
        base = results["baseline"]
        lines += [f"Plain greedy decoding: {base['tokens']} tokens at {_fmt(base['tokens_per_s'], '.1f')} tokens/s."]
    if decoding and settings.get("transformers_early_exit", True):
        lines += ["",
                  "transformers' `assistant_early_exit` (a separate draft cache; the verification runs every layer):",
                  "",
                  "| exit layer | agreement | acceptance | tokens/round | tokens/s | baseline tokens/s | speed-up "
                  "| identical |",
                  "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for row in results["layers"]:
            lines.append(f"| {row['layer']} | {row['agreement']:.3f} | {_fmt(row['acceptance_rate'], '.3f')} "
                         f"| {_fmt(row['tokens_per_round'], '.2f')} | {_fmt(row['tokens_per_s'], '.1f')} "
                         f"| {_fmt(row['baseline_tokens_per_s'], '.1f')} | {_fmt(row['speedup'], '.2f')}x "
                         f"| {'yes' if row['identical'] else 'NO'} |")
    shared = [row for row in results["layers"] if "shared_cache" in row]
    if shared:
        lines += ["", "Shared-cache draft loop (LayerSkip's scheme: the verification reuses the draft's "
                  "first-k-layer cache and exit hidden states); plain greedy through the same loop: "
                  f"{_fmt(base.get('same_loop_tokens_per_s'), '.1f')} tokens/s.", "",
                  "| exit layer | agreement | acceptance | tokens/round | tokens/s | speed-up | vs same loop "
                  "| layer-call speed-up | identical |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for row in shared:
            loop = row["shared_cache"]
            lines.append(f"| {row['layer']} | {row['agreement']:.3f} | {_fmt(loop['acceptance_rate'], '.3f')} "
                         f"| {_fmt(loop['tokens_per_round'], '.2f')} | {_fmt(loop['tokens_per_s'], '.1f')} "
                         f"| {_fmt(loop['speedup'], '.2f')}x | {_fmt(loop['speedup_vs_same_loop'], '.2f')}x "
                         f"| {_fmt(loop['layer_call_speedup'], '.2f')}x | {'yes' if loop['identical'] else 'NO'} |")
    if not decoding:
        lines += ["| exit layer | agreement |", "|---:|---:|"]
        lines += [f"| {row['layer']} | {row['agreement']:.3f} |" for row in results["layers"]]
    lines += ["", "agreement: teacher-forced top-1 agreement of the layer's readout with the final layer over "
              f"{results['layers'][0]['agreement_positions']} response positions; acceptance: accepted / proposed "
              "draft tokens; tokens/round: new tokens per full-model verification; speed-up: tokens/s over plain "
              "greedy generate; layer-call speed-up: plain greedy's decoder-layer calls per token over the loop's, the "
              "speed-up if a layer call cost the same however many tokens it carries (weight-read-bound decoding, as "
              "on a GPU)."]
    return "\n".join(lines)


def plot_png(results: Dict[str, Any]) -> bytes:
    """PNG bytes: agreement (and acceptance) on the left axis, speed-up on the right, against the exit layer."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib.figure import Figure

    rows = results["layers"]
    layers = [r["layer"] for r in rows]
    figure = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = figure.add_subplot()
    ax.plot(layers, [r["agreement"] for r in rows], "o-", color="tab:blue", label="agreement")
    # each decoder's curves where every layer has them: (label, its numbers per row, or None)
    transformers = [r.get("acceptance_rate") is not None and r.get("speedup") is not None for r in rows]
    shared = [r.get("shared_cache", {}).get("speedup") is not None for r in rows]
    if all(transformers):
        ax.plot(layers, [r["acceptance_rate"] for r in rows], "s--", color="tab:cyan", label="acceptance")
    elif all(shared):
        ax.plot(layers, [r["shared_cache"]["acceptance_rate"] for r in rows], "s--", color="tab:cyan",
                label="acceptance")
    ax.set_xlabel(f"exit layer (of {results['num_layers']})")
    ax.set_ylabel("rate")
    ax.set_ylim(0, 1.05)
    handles, labels = ax.get_legend_handles_labels()
    if all(transformers) or all(shared):
        right = ax.twinx()
        if all(transformers):
            right.plot(layers, [r["speedup"] for r in rows], "^-", color="tab:red", label="speed-up (transformers)")
        if all(shared):
            right.plot(layers, [r["shared_cache"]["speedup"] for r in rows], "v-", color="darkred",
                       label="speed-up (shared cache)")
            right.plot(layers, [r["shared_cache"]["layer_call_speedup"] for r in rows], "v:", color="darkred",
                       alpha=0.6, label="layer-call speed-up (shared cache)")
        right.axhline(1.0, color="tab:red", linewidth=0.8, linestyle=":")
        right.set_ylabel("speed-up over plain greedy (x)")
        right.set_ylim(bottom=0)
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="best", framealpha=0.8)
    ax.set_title(f"Early-exit drafting: {results['model']}", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_reports(results: Dict[str, Any], output_dir: Path) -> None:
    """Write ``speculate.json``, ``speculate.md`` and ``speculate.png`` into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / "speculate.json", results)
    atomic_write_text(output_dir / "speculate.md", format_markdown(results) + "\n")
    try:
        png = plot_png(results)
    except ImportError:  # matplotlib is the optional [plot] extra: keep the measurement, say how to get the plot
        print("lit-idpo speculate: speculate.png not written: matplotlib is not installed (pip install "
              "'lit-idpo[plot]')", file=sys.stderr)
        return
    atomic_write_bytes(output_dir / "speculate.png", png)


def mismatch_message(prompt: int, row: int, layer: int, plain: List[int], early: List[int], gap: Sequence[float],
                     tokenizer, *, near_tie: float, implementation: str = "transformers' assistant_early_exit") -> str:
    """Why an early-exit output is not plain greedy decoding's: the decoder (``implementation``), the prompt (its
    position in the run and row index in the split), the first differing new token of each, and whether the final
    layer's top-2 logit gap there (``gap``, per new token) is below ``near_tie`` (a numerical near-tie) or not (a
    bug)."""
    position = next((j for j, (a, b) in enumerate(zip(plain, early)) if a != b), min(len(plain), len(early)))

    def token(tokens: List[int]) -> str:
        return f"{tokens[position]} ({tokenizer.decode([tokens[position]])!r})" if position < len(tokens) else "the end"

    why = ""
    if position < len(gap):
        why = (f"; the final layer's top-2 logit gap there is {gap[position]:.3g}, "
               + ("a near-tie: the verifying forward over several tokens sums in another order than one-token steps, "
                  "so this is float rounding; another dtype or device may agree" if gap[position] < near_tie
                  else "not a near-tie: the early-exit decoding itself is wrong"))
    return (f"speculate: early-exit decoding from layer {layer} ({implementation}) is not identical to plain greedy "
            f"decoding on prompt "
            f"{prompt} (row index {row} of the split): first difference at new token {position}: plain greedy gave "
            f"{token(plain)}, early exit gave {token(early)}{why}")
