"""``lit-idpo sweep``: train a list of Intermediate DPO settings from one base config and judge each
against plain DPO and against the untrained (SFT) model.

A sweep is described by one YAML file (examples in ``configs/sweeps/``)::

    output_dir: runs/sweep_tiny          # everything goes here (relative to the working directory)
    base_config: ../tiny.yaml            # a fit config; relative paths are read from this file's folder
    fit:                                 # optional: fit options on top of base_config (same nesting)
      trainer: {max_steps: 2}
    settings:                            # each trained from the same base: layers, and optionally gamma,
      - {layers: [1]}                    #   a name, and extra fit options (dotted keys)
      - {layers: [3], gamma: 0.25, name: late, overrides: {model.beta: 0.2}}
    grid:                                # optional: the product of these lists is added to settings
      layers: [[1], [2], [1, 3]]
      gamma: [0.5]
    baselines: {dpo: true, sft: true}    # dpo: the same training with gamma 1 and no layers
    evaluate:                            # see lit_idpo.evaluate; data defaults to the fit's held-out split
      data: {limit: 200}
      generation: {max_new_tokens: 32, batch_size: 25}
      judge: {name: rule}                # or {name: openai, base_url: ..., model: ...} / {name: reward-model, reward_model: ...}
      implicit: {layers: auto}           # null: no implicit-reward accuracy
      confidence: 0.95

What happens (``lit-idpo sweep --config FILE``):

1. Every setting (and the DPO baseline) is trained with ``lit-idpo fit --config <base_config>
   --config <output_dir>/fit_overrides.yaml --config <output_dir>/runs/<name>/setting.yaml``; the
   per-setting file sets ``model.layers``, ``model.gamma``, its extra options and the output folders.
   These files are written first, so every run can be repeated by hand with exactly that command
   (``--dry_run`` prints them and trains nothing).
2. ``<output_dir>/manifest.json`` records each finished training with a hash of its full
   configuration. Run the sweep again and finished settings are skipped (a changed configuration is
   retrained); a setting interrupted mid-training is retrained from the start. Generations are cached
   (:mod:`lit_idpo.evaluate`), so re-running only generates what is missing.
3. Every setting is judged against DPO and against SFT, and DPO against SFT, with one judge, both
   orders, ties = 1/2, 95 % t-interval over prompts (see :mod:`lit_idpo.evaluate`). Written:
   ``sweep_results.json``, ``sweep_results.md`` (printed too), ``sweep_plot.png`` (win rate with its
   interval against layer position for one-layer settings, and against the number of layers K), and
   the full evaluation in ``<output_dir>/eval/``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

SPEC_KEYS = {"output_dir", "base_config", "fit", "settings", "grid", "baselines", "evaluate"}
SETTING_KEYS = {"name", "layers", "gamma", "overrides"}
EVALUATE_KEYS = {"data", "generation", "judge", "implicit", "confidence"}
SFT, DPO = "sft", "dpo"


def _info(message: str) -> None:
    print(f"lit-idpo sweep: {message}", file=sys.stderr, flush=True)


@dataclass
class Setting:
    """One training run of the sweep: intermediate ``layers`` (K = their number), ``gamma``, extra fit options."""

    name: str
    layers: List[int]
    gamma: Optional[float] = None
    overrides: Dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.layers)


@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring)."""

    path: Path
    output_dir: Path
    base_config: Optional[Path]
    fit: Dict[str, Any]
    settings: List[Setting]
    baselines: Dict[str, bool]
    evaluate: Dict[str, Any]


def _setting_name(layers: Sequence[int], gamma: Optional[float]) -> str:
    name = "L" + "+".join(str(l) for l in layers) if layers else "L-none"
    return name + (f"-g{gamma:g}" if gamma is not None else "")


def _check_keys(where: str, mapping: Any, allowed: set) -> None:
    if not isinstance(mapping, dict):
        raise ValueError(f"{where} must be a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _parse_setting(where: str, raw: Any) -> Setting:
    _check_keys(where, raw, SETTING_KEYS)
    layers = raw.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(l, int) and not isinstance(l, bool) for l in layers):
        raise ValueError(f"{where}.layers={layers!r}; give a non-empty list of intermediate layer numbers, e.g. [21] "
                         f"(plain DPO is the 'dpo' baseline)")
    gamma = raw.get("gamma")
    if gamma is not None and (not isinstance(gamma, (int, float)) or not 0.0 <= gamma < 1.0):
        raise ValueError(f"{where}.gamma={gamma!r}; it must be in [0, 1) (1 is plain DPO, the 'dpo' baseline)")
    overrides = raw.get("overrides") or {}
    _check_keys(f"{where}.overrides", overrides, set(overrides))
    for key in overrides:
        if key in ("model.layers", "model.gamma", "model.hf_output_dir", "trainer.default_root_dir"):
            raise ValueError(f"{where}.overrides sets {key!r}, which the sweep sets itself; use the setting's own "
                             f"layers / gamma keys")
    name = raw.get("name") or _setting_name(layers, gamma)
    return Setting(str(name), list(layers), None if gamma is None else float(gamma), dict(overrides))


def load_spec(path: str | Path, output_dir: Optional[str] = None) -> SweepSpec:
    """Read and check a sweep file; errors name the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    _check_keys(f"sweep config {path}", raw, SPEC_KEYS)
    base = raw.get("base_config")
    base_path = None
    if base is not None:
        base_path = Path(base) if Path(base).is_absolute() else (path.parent / base)
        if not base_path.is_file() and Path(base).is_file():
            base_path = Path(base)
        if not base_path.is_file():
            raise ValueError(f"{path}: base_config {base!r} not found (relative paths are read from {path.parent})")
        base_path = base_path.resolve()
    fit = raw.get("fit") or {}
    _check_keys(f"{path}: fit", fit, set(fit))
    if base_path is None and not fit:
        raise ValueError(f"{path}: give base_config (a fit config) and/or fit (fit options)")
    settings = [_parse_setting(f"settings[{i}]", s) for i, s in enumerate(raw.get("settings") or [])]
    grid = raw.get("grid")
    if grid:
        _check_keys("grid", grid, {"layers", "gamma"})
        layer_lists = grid.get("layers") or []
        gammas = grid.get("gamma") or [None]
        if not layer_lists:
            raise ValueError("grid.layers is empty; give a list of layer lists, e.g. [[5], [21], [27]]")
        for i, (layers, gamma) in enumerate(itertools.product(layer_lists, gammas)):
            settings.append(_parse_setting(f"grid[{i}]", {"layers": layers, "gamma": gamma}))
    if not settings:
        raise ValueError(f"{path}: no settings; give settings and/or grid")
    names = [s.name for s in settings]
    clashes = sorted({n for n in names if names.count(n) > 1} | ({SFT, DPO} & set(names)))
    if clashes:
        raise ValueError(f"{path}: setting name(s) {clashes} are used twice or clash with the baselines 'sft'/'dpo'; "
                         f"name the settings")
    baselines = {DPO: True, SFT: True, **(raw.get("baselines") or {})}
    _check_keys("baselines", baselines, {DPO, SFT})
    evaluate = raw.get("evaluate") or {}
    _check_keys("evaluate", evaluate, EVALUATE_KEYS)
    out = output_dir or raw.get("output_dir")
    if not out:
        raise ValueError(f"{path}: give output_dir (in the file or with --output_dir)")
    return SweepSpec(path=path, output_dir=Path(out), base_config=base_path, fit=fit, settings=settings,
                     baselines=baselines, evaluate=evaluate)


@contextlib.contextmanager
def _bare_argv():
    """Hide this process's own arguments while LightningCLI runs with explicit ``args`` (it warns on both)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def _parse_fit_config(config_files: Sequence[str]):
    """The full fit configuration (defaults filled in) that these --config files give, without loading anything."""
    from lit_idpo.cli import IntermediateDPOCLI
    from lit_idpo.data import PreferenceDataModule
    from lit_idpo.module import IntermediateDPO

    class _ParseOnly(IntermediateDPOCLI):
        def instantiate_classes(self) -> None:
            pass

    args: List[str] = []
    for f in config_files:
        args += ["--config", str(f)]
    with _bare_argv():
        return _ParseOnly(IntermediateDPO, PreferenceDataModule, run=False, args=args).config


def _nested(dotted: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _to_plain(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


class Sweep:
    """A sweep on disk: its spec, its per-setting config files, its manifest, and the steps to run it."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.out = spec.output_dir
        self.manifest_path = self.out / "manifest.json"
        self.out.mkdir(parents=True, exist_ok=True)
        self.fit_overrides = self.out / "fit_overrides.yaml"
        self.fit_overrides.write_text(yaml.safe_dump(spec.fit, sort_keys=False) if spec.fit else "{}\n")
        self.common_configs = ([str(spec.base_config)] if spec.base_config else []) + [str(self.fit_overrides)]
        self.base = _parse_fit_config(self.common_configs)
        self.base_model = self.base.model.model
        self.runs: Dict[str, Setting] = {}
        if spec.baselines.get(DPO):
            self.runs[DPO] = Setting(DPO, [], 1.0)
        for s in spec.settings:
            self.runs[s.name] = s
        self.manifest = self._read_manifest()

    # ------------------------------------------------------------------ files
    def _read_manifest(self) -> Dict[str, Any]:
        if self.manifest_path.is_file():
            return json.loads(self.manifest_path.read_text())
        return {"settings": {}}

    def _write_manifest(self) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2) + "\n")
        tmp.replace(self.manifest_path)

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    def hf_dir(self, name: str) -> Path:
        return self.run_dir(name) / "hf_model"

    def setting_config(self, setting: Setting) -> Dict[str, Any]:
        """The per-setting fit options (layers, gamma, output folders, extra overrides) as a nested config."""
        run = self.run_dir(setting.name).resolve()
        dotted: Dict[str, Any] = {"model.layers": list(setting.layers), "model.hf_output_dir": str(run / "hf_model"),
                                  "trainer.default_root_dir": str(run)}
        if setting.gamma is not None:
            dotted["model.gamma"] = setting.gamma
        logger = self.base.trainer.logger
        if hasattr(logger, "class_path") and "save_dir" in (_to_plain(getattr(logger, "init_args", {})) or {}):
            dotted["trainer.logger"] = {"class_path": logger.class_path, "init_args": {"save_dir": str(run)}}
        dotted.update(setting.overrides)
        return _nested(dotted)

    def fit_args(self, setting: Setting) -> List[str]:
        """The exact ``lit-idpo fit`` arguments of one setting (writes its setting.yaml)."""
        run = self.run_dir(setting.name)
        run.mkdir(parents=True, exist_ok=True)
        path = run / "setting.yaml"
        path.write_text(yaml.safe_dump(self.setting_config(setting), sort_keys=False))
        args = ["fit"]
        for config in self.common_configs + [str(path)]:
            args += ["--config", config]
        return args

    def config_hash(self, setting: Setting) -> str:
        """A hash of the run's configuration as data (base config, fit options, setting), not of its formatting."""
        parts = [yaml.safe_load(Path(c).read_text()) for c in self.common_configs]
        parts.append(self.setting_config(setting))
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def is_trained(self, name: str) -> bool:
        """Whether the manifest lists this run as finished with its current configuration, and its model is there."""
        entry = self.manifest["settings"].get(name) or {}
        hf = self.hf_dir(name)
        return (entry.get("status") == "trained" and entry.get("config_hash") == self.config_hash(self.runs[name])
                and ((hf / "config.json").is_file() or (hf / "adapter_config.json").is_file()))

    # ------------------------------------------------------------------ steps
    def plan(self) -> List[str]:
        """One line per training run: its state and its exact command."""
        lines = []
        for name, setting in self.runs.items():
            state = "done" if self.is_trained(name) else "to train"
            lines.append(f"[{state}] {name}: lit-idpo " + " ".join(self.fit_args(setting)))
        return lines

    def train(self) -> None:
        """Train every setting that the manifest does not list as finished with the same configuration."""
        from lit_idpo.cli import main as cli_main

        todo = [n for n in self.runs if not self.is_trained(n)]
        _info(f"{len(self.runs) - len(todo)} of {len(self.runs)} training run(s) already done; {len(todo)} to train")
        for i, name in enumerate(todo, start=1):
            setting = self.runs[name]
            run = self.run_dir(name)
            if run.exists():  # a run that did not finish: start it again from scratch
                shutil.rmtree(run)
            args = self.fit_args(setting)
            _info(f"[{i}/{len(todo)}] training {name} (layers {setting.layers or 'none'}, gamma "
                  f"{setting.gamma if setting.gamma is not None else self.base.model.gamma}): lit-idpo {' '.join(args)}")
            started = time.perf_counter()
            with _bare_argv():
                cli_main(args)
            seconds = time.perf_counter() - started
            if not (self.hf_dir(name) / "config.json").is_file() and not (self.hf_dir(name) / "adapter_config.json").is_file():
                raise RuntimeError(f"training {name} finished without writing {self.hf_dir(name)}")
            self.manifest["settings"][name] = {"status": "trained", "config_hash": self.config_hash(setting),
                                               "hf_model": str(self.hf_dir(name)), "fit_seconds": round(seconds, 1),
                                               "layers": setting.layers, "gamma": setting.gamma,
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            self._write_manifest()
            _info(f"{name}: trained in {seconds:.0f} s")

    def num_layers(self) -> int:
        for name in self.runs:
            config = self.hf_dir(name) / "config.json"
            if config.is_file():
                data = json.loads(config.read_text())
                return int(data.get("num_hidden_layers") or data.get("n_layer"))
        raise RuntimeError("no trained model directory to read the number of layers from; train first")

    def evaluate(self, progress: bool = True) -> Dict[str, Any]:
        """Judge every setting against DPO and SFT (and DPO against SFT); write the table and the plot."""
        from lit_idpo.evaluate import (DataOptions, GenerationOptions, ImplicitOptions, ModelSpec, evaluate)
        from lit_idpo.judges import build_judge

        options = copy.deepcopy(self.spec.evaluate)
        data_raw = {"source": self.base.data.source, "split": self.base.data.val_split,
                    "data_files": _to_plain(self.base.data.data_files), "subset": self.base.data.subset,
                    "format": self.base.data.format, **(options.get("data") or {})}
        if not data_raw["split"]:
            raise ValueError(f"{self.spec.path}: the fit config has no data.val_split, so the held-out split is unknown; "
                             f"set evaluate.data.split (and evaluate.data.source if it differs)")
        data = DataOptions(**data_raw)
        generation = GenerationOptions(**(options.get("generation") or {}))
        judge_raw = dict(options.get("judge") or {"name": "rule"})
        judge = build_judge(judge_raw.pop("name", "rule"), **judge_raw)
        implicit_raw = options.get("implicit", {"layers": "auto"})
        models = []
        if self.spec.baselines.get(SFT):
            models.append(ModelSpec(SFT, self.base_model))
        for name in self.runs:
            if not self.is_trained(name):
                raise RuntimeError(f"{name} is not trained yet; run the sweep's training first")
            models.append(ModelSpec(name, str(self.hf_dir(name))))
        baselines = [b for b in (DPO, SFT) if any(m.name == b for m in models)]
        pairs = [(s.name, b) for s in self.spec.settings for b in baselines]
        if DPO in baselines and SFT in baselines:
            pairs.append((DPO, SFT))
        implicit = None
        if implicit_raw is not None:
            implicit = ImplicitOptions(**implicit_raw)
            if implicit.layers == "auto":
                # The trained layers of every setting, plus the evenly spaced ones.
                from lit_idpo.evaluate import resolve_implicit_layers

                L = self.num_layers()
                trained = {l if l > 0 else l + L + 1 for s in self.spec.settings for l in s.layers}
                implicit.layers = sorted(set(resolve_implicit_layers("auto", L)) | trained)
        results = evaluate(models, self.out / "eval", judge=judge, data=data, generation=generation, pairs=pairs,
                           reference=self.base_model if implicit is not None else None,
                           implicit=implicit or ImplicitOptions(), confidence=options.get("confidence", 0.95),
                           progress=progress)
        summary = self.summarize(results)
        tmp = self.out / "sweep_results.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(self.out / "sweep_results.json")
        (self.out / "sweep_results.md").write_text(format_sweep_markdown(summary) + "\n")
        plot_sweep(summary, self.out / "sweep_plot.png")
        return summary

    def summarize(self, results: Mapping[str, Any]) -> Dict[str, Any]:
        """One row per setting (and the baselines) with its win rates, intervals and scores."""
        L = self.num_layers()
        pairs = {(p["first"], p["second"]): p for p in results["pairs"]}
        scores = {m["name"]: m.get("score") for m in results["models"]}
        implicit = results.get("implicit_reward") or {}
        layer_index = {l: i for i, l in enumerate(implicit.get("layers", []))}

        def implicit_at(name: str, layer: int) -> Optional[float]:
            values = implicit.get("models", {}).get(name)
            return None if values is None or layer not in layer_index else values["accuracy"][layer_index[layer]]

        rows = []
        for name, setting in self.runs.items():
            layers = [l if l > 0 else l + L + 1 for l in setting.layers]
            entry = self.manifest["settings"].get(name, {})
            row = {"name": name, "layers": layers, "k": len(layers),
                   "gamma": setting.gamma if setting.gamma is not None else float(self.base.model.gamma),
                   "relative_position": [round(l / L, 4) for l in layers],
                   "fit_seconds": entry.get("fit_seconds"), "score": scores.get(name),
                   "implicit_final": implicit_at(name, L),
                   "implicit_trained_layers": [implicit_at(name, l) for l in layers]}
            for baseline in (DPO, SFT):
                p = pairs.get((name, baseline))
                row[f"vs_{baseline}"] = None if p is None else {
                    k: p[k] for k in ("win_rate", "ci_low", "ci_high", "ci_method", "wins", "ties", "losses", "prompts", "invalid")}
            rows.append(row)
        return {"num_layers": L, "base_model": self.base_model, "judge": results["judge"], "prompts": results["prompts"],
                "generation": results["generation"], "confidence": results["confidence"], "ci_method": results["ci_method"],
                "sft_score": scores.get(SFT), "rows": rows, "implicit_layers": implicit.get("layers"),
                "evaluation": str(self.out / "eval" / "results.md")}


def _cell(p: Optional[Mapping[str, Any]]) -> str:
    if p is None:
        return "n/a"
    wilson = " W" if p["ci_method"] != "t" else ""
    return f"{100 * p['win_rate']:.1f} [{100 * p['ci_low']:.1f}, {100 * p['ci_high']:.1f}]{wilson}"


def _wtl(p: Optional[Mapping[str, Any]]) -> str:
    return "n/a" if p is None else f"{p['wins']}/{p['ties']}/{p['losses']}"


def format_sweep_markdown(summary: Mapping[str, Any]) -> str:
    """The sweep table: one row per run, win rates with intervals against DPO and SFT, scores, fit time."""
    conf = round(100 * summary["confidence"])
    is_rule = summary["judge"]["name"] == "rule"
    score_label = "accuracy (%)" if is_rule else "mean score"
    lines = [f"Base model `{summary['base_model']}` ({summary['num_layers']} layers); {summary['prompts']['prompts']} "
             f"prompts from split `{summary['prompts']['split']}` of `{summary['prompts']['source']}`; judge "
             f"`{summary['judge']['name']}`; win rate (%) of the row's model with its {conf} % interval "
             f"(t over prompts; W: Wilson, all prompts scored alike); W/T/L counts judgments in both orders.", ""]
    lines.append(f"| run | layers | K | gamma | vs DPO | W/T/L vs DPO | vs SFT | W/T/L vs SFT | {score_label} | "
                 f"implicit acc. final (%) | implicit acc. at its layers (%) | fit (s) |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def fmt_score(s):
        if not s:
            return "n/a"
        return f"{100 * s['mean']:.1f}" if is_rule else f"{s['mean']:.4f}"

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}"

    sft_score = summary.get("sft_score")
    if sft_score:
        lines.append(f"| sft (untrained) | - | - | - | - | - | - | - | {fmt_score(sft_score)} | - | - | - |")
    for r in summary["rows"]:
        layers = ",".join(map(str, r["layers"])) or "-"
        lines.append(f"| {r['name']} | {layers} | {r['k']} | {r['gamma']:g} | {_cell(r['vs_dpo']) if r['name'] != DPO else '-'} | "
                     f"{_wtl(r['vs_dpo']) if r['name'] != DPO else '-'} | {_cell(r['vs_sft'])} | {_wtl(r['vs_sft'])} | "
                     f"{fmt_score(r['score'])} | {pct(r['implicit_final'])} | "
                     f"{', '.join(pct(x) for x in r['implicit_trained_layers']) or '-'} | "
                     f"{r['fit_seconds'] if r['fit_seconds'] is not None else 'n/a'} |")
    lines += ["", f"CI method: {summary['ci_method']}."]
    return "\n".join(lines)


def plot_sweep(summary: Mapping[str, Any], path: Path) -> Path:
    """PNG: win rate (with interval) against layer position (K = 1 runs) and against K, versus DPO and SFT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in summary["rows"] if r["name"] != DPO]
    dpo = next((r for r in summary["rows"] if r["name"] == DPO), None)
    L = summary["num_layers"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = {DPO: "tab:blue", SFT: "tab:orange"}
    gammas = sorted({r["gamma"] for r in rows})
    markers = dict(zip(gammas, "osD^v<>"))

    def draw(ax, x, p, baseline, marker, label):
        if p is None:
            return
        y = 100 * p["win_rate"]
        err = [[y - 100 * p["ci_low"]], [100 * p["ci_high"] - y]]
        ax.errorbar([x], [y], yerr=err, fmt=marker, color=colours[baseline], capsize=4, label=label)

    seen = set()
    ax = axes[0]
    for r in rows:
        if r["k"] != 1:
            continue
        for baseline, dx in ((DPO, -0.15), (SFT, 0.15)):
            label = f"vs {baseline.upper()} (gamma {r['gamma']:g})"
            draw(ax, r["layers"][0] + dx, r[f"vs_{baseline}"], baseline, markers[r["gamma"]], None if label in seen else label)
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
                draw(ax, centre + dx, r[f"vs_{baseline}"], baseline, markers[r["gamma"]], None if label in seen else label)
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
            ax.axhline(100 * dpo["vs_sft"]["win_rate"], color=colours[SFT], linestyle="--", linewidth=0.8,
                       label="DPO vs SFT")
        ax.set_ylabel(f"win rate (%) with {round(100 * summary['confidence'])} % interval")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if handles:  # below the axes: inside, "best" can still cover the run labels along the bottom
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(3, len(handles)))
    judge = summary["judge"]["name"]
    fig.suptitle(f"Intermediate DPO vs DPO and vs SFT: {summary['base_model']}, judge {judge}, "
                 f"{summary['prompts']['prompts']} prompts", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_sweep(config: str | Path, *, output_dir: Optional[str] = None, train_only: bool = False,
              progress: bool = True) -> Optional[Dict[str, Any]]:
    """Train what is missing, then evaluate; returns the sweep summary (None with ``train_only``)."""
    started = time.perf_counter()
    sweep = Sweep(load_spec(config, output_dir))
    sweep.train()
    if train_only:
        return None
    summary = sweep.evaluate(progress=progress)
    summary["wall_time_s_this_invocation"] = round(time.perf_counter() - started, 1)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    """Entry point of ``lit-idpo sweep``."""
    parser = argparse.ArgumentParser(
        prog="lit-idpo sweep",
        description="Train a list of Intermediate DPO settings (layers, K, gamma) from one base config, judge each "
                    "against plain DPO and the untrained SFT model, and write a table and a plot. Re-running resumes: "
                    "finished settings (manifest.json) are skipped and cached generations reused.")
    parser.add_argument("--config", required=True, help="the sweep file (see configs/sweeps/)")
    parser.add_argument("--output_dir", default=None, help="override the file's output_dir")
    parser.add_argument("--dry_run", action="store_true",
                        help="print each run's state and exact fit command (writing the config files those commands "
                             "read into output_dir); train nothing")
    parser.add_argument("--train_only", action="store_true", help="train what is missing, do not evaluate")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.config, args.output_dir)
    except ValueError as err:
        parser.error(str(err))
    if args.dry_run:
        sweep = Sweep(spec)
        print("\n".join(sweep.plan()))
        return None
    started = time.perf_counter()
    summary = run_sweep(args.config, output_dir=args.output_dir, train_only=args.train_only,
                        progress=not args.no_progress)
    if summary is not None:
        print(format_sweep_markdown(summary))
        print(f"\nWritten: {spec.output_dir / 'sweep_results.md'}, {spec.output_dir / 'sweep_plot.png'} "
              f"({time.perf_counter() - started:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
