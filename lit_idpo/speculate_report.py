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
        lines += [f"Plain greedy decoding: {base['tokens']} tokens at {_fmt(base['tokens_per_s'], '.1f')} tokens/s.",
                  "",
                  "| exit layer | agreement | acceptance | tokens/round | tokens/s | baseline tokens/s | speed-up "
                  "| identical |",
                  "|---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for row in results["layers"]:
            lines.append(f"| {row['layer']} | {row['agreement']:.3f} | {_fmt(row['acceptance_rate'], '.3f')} "
                         f"| {_fmt(row['tokens_per_round'], '.2f')} | {_fmt(row['tokens_per_s'], '.1f')} "
                         f"| {_fmt(row['baseline_tokens_per_s'], '.1f')} | {_fmt(row['speedup'], '.2f')}x "
                         f"| {'yes' if row['identical'] else 'NO'} |")
    else:
        lines += ["| exit layer | agreement |", "|---:|---:|"]
        lines += [f"| {row['layer']} | {row['agreement']:.3f} |" for row in results["layers"]]
    lines += ["", "agreement: teacher-forced top-1 agreement of the layer's readout with the final layer over "
              f"{results['layers'][0]['agreement_positions']} response positions; acceptance: accepted / proposed "
              "draft tokens; tokens/round: new tokens per full-model verification."]
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
    if results["settings"]["draft_decoding"]:
        ax.plot(layers, [r["acceptance_rate"] for r in rows], "s--", color="tab:cyan", label="acceptance")
    ax.set_xlabel(f"exit layer (of {results['num_layers']})")
    ax.set_ylabel("rate")
    ax.set_ylim(0, 1.05)
    handles, labels = ax.get_legend_handles_labels()
    if results["settings"]["draft_decoding"] and all(r["speedup"] is not None for r in rows):
        right = ax.twinx()
        right.plot(layers, [r["speedup"] for r in rows], "^-", color="tab:red", label="speed-up")
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
                     tokenizer, *, near_tie: float) -> str:
    """Why an early-exit output is not plain greedy decoding's: the prompt (its position in the run and row index
    in the split), the first differing new token of each, and whether the final layer's top-2 logit gap there
    (``gap``, per new token) is below ``near_tie`` (a numerical near-tie) or not (a bug)."""
    position = next((j for j, (a, b) in enumerate(zip(plain, early)) if a != b), min(len(plain), len(early)))

    def token(tokens: List[int]) -> str:
        return f"{tokens[position]} ({tokenizer.decode([tokens[position]])!r})" if position < len(tokens) else "the end"

    why = ""
    if position < len(gap):
        why = (f"; the final layer's top-2 logit gap there is {gap[position]:.3g}, "
               + ("a near-tie: the verifying forward over several tokens sums in another order than one-token steps, "
                  "so this is float rounding; another dtype or device may agree" if gap[position] < near_tie
                  else "not a near-tie: the early-exit decoding itself is wrong"))
    return (f"speculate: early-exit decoding from layer {layer} is not identical to plain greedy decoding on prompt "
            f"{prompt} (row index {row} of the split): first difference at new token {position}: plain greedy gave "
            f"{token(plain)}, early exit gave {token(early)}{why}")
