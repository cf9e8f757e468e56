"""The sweep's runs: one ``lit-idpo fit`` child process per setting (and the DPO baseline, per seed), the
manifest that skips finished runs, and the evaluation of every setting against DPO and SFT.

How a sweep runs, what it writes and how seeds pair the arms: ``docs/sweep.md``.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

from lit_idpo import evaluation
from lit_idpo.errors import ConfigError, UserError, info
from lit_idpo.evaluation.statistics import compare_over_seeds, verdict
from lit_idpo.layers import resolve_layers
from lit_idpo.storage import atomic_write_json, atomic_write_text, read_json_or
from lit_idpo.sweep.report import format_sweep_markdown, plot_sweep, write_sweep_plot
from lit_idpo.sweep.seeds import eval_name, run_key, summarize_seeds
from lit_idpo.sweep.spec import (
    DPO,
    SEED_KEYS,
    SFT,
    DataOptions,
    ImplicitOptions,
    Setting,
    SweepConfig,
    SweepSpec,
    load_spec,
    parse_args,
    spec_from_config,
)

__all__ = ["Setting", "Sweep", "SweepConfig", "SweepSpec", "TrainingRunError", "compare_over_seeds", "eval_name",
           "format_sweep_markdown", "load_spec", "main", "plot_sweep", "run_key", "run_sweep", "verdict"]


class TrainingRunError(UserError, RuntimeError):
    """A setting's ``lit-idpo fit`` child process failed. Its own error and traceback are in its log (and were
    shown as it ran); this message names the setting, the exit code, the log and the command to repeat it."""


def _parse_fit_config(config_files: Sequence[str]):
    """The full fit configuration these --config files give (see :func:`lit_idpo.fit.parse_fit_config`)."""
    from lit_idpo.fit import parse_fit_config  # Lightning and the model classes: loaded only when a sweep runs

    return parse_fit_config(config_files)


def fit_command(config_files: Sequence[str]) -> List[str]:
    """The child-process argv of ``lit-idpo fit --config A --config B ...`` with this Python interpreter."""
    argv = [sys.executable, "-m", "lit_idpo.cli", "fit"]
    for path in config_files:
        argv += ["--config", str(path)]
    return argv


def run_logged(argv: Sequence[str], log_path: Path) -> int:
    """Run ``argv`` as a child process, copying its output (stdout and stderr) to the console and to ``log_path``.

    Returns the exit code. On KeyboardInterrupt (which the child, in the same process group, gets too)
    the child is given 30 s to stop, then killed, and the interrupt is raised again.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log_path, "wb") as log:
        child = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            # Read chunks, not lines: progress bars redraw with carriage returns and no newline.
            while chunk := child.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                sys.stderr.write(decoder.decode(chunk))
                sys.stderr.flush()
            return child.wait()
        except BaseException:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
        finally:
            child.stdout.close()


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
        self.fit_overrides = self.out / "fit_overrides.yaml"
        atomic_write_text(self.fit_overrides, yaml.safe_dump(spec.fit, sort_keys=False) if spec.fit else "{}\n")
        self.common_configs = ([str(spec.base_config)] if spec.base_config else []) + [str(self.fit_overrides)]
        self.base = _parse_fit_config(self.common_configs)
        self.base_model = self.base.model.model
        # The arms (the DPO baseline, then the settings), and the training runs: one per arm, or, with seeds,
        # one per arm and seed, keyed "<arm>/seed<k>" (their folder under runs/), seed-major so that a partly
        # trained sweep has whole seeds.
        self.arms: Dict[str, Setting] = {}
        if spec.baselines.get(DPO):
            self.arms[DPO] = Setting(DPO, [], 1.0)
        for s in spec.settings:
            self.arms[s.name] = s
        if spec.seeds is None:
            self.runs: Dict[str, Setting] = dict(self.arms)
        else:
            self.runs = {run_key(arm, seed): dataclasses.replace(s, name=run_key(arm, seed), seed=seed)
                         for seed in spec.seeds for arm, s in self.arms.items()}
        self.manifest = read_json_or(self.manifest_path, {"settings": {}})

    # ------------------------------------------------------------------ files
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
        if setting.seed is not None:  # every seed the training uses; the model's init_seed (the SFT model) stays
            dotted.update(dict.fromkeys(SEED_KEYS, setting.seed))
        logger = self.base.trainer.logger
        if hasattr(logger, "class_path") and "save_dir" in (_to_plain(getattr(logger, "init_args", {})) or {}):
            dotted["trainer.logger"] = {"class_path": logger.class_path, "init_args": {"save_dir": str(run)}}
        dotted.update(setting.overrides)
        return _nested(dotted)

    def fit_argv(self, setting: Setting) -> List[str]:
        """The exact child-process command line of one setting's training (writes its setting.yaml)."""
        path = self.run_dir(setting.name) / "setting.yaml"
        atomic_write_text(path, yaml.safe_dump(self.setting_config(setting), sort_keys=False))
        return fit_command(self.common_configs + [str(path)])

    def fit_args(self, setting: Setting) -> List[str]:
        """The ``lit-idpo`` arguments of one setting's training: ``fit --config ...`` (writes its setting.yaml)."""
        return self.fit_argv(setting)[3:]

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
        todo = [n for n in self.runs if not self.is_trained(n)]
        info("sweep", f"{len(self.runs) - len(todo)} of {len(self.runs)} training run(s) already done; "
                      f"{len(todo)} to train")
        for i, name in enumerate(todo, start=1):
            self.train_one(name, f"[{i}/{len(todo)}]")

    def train_one(self, name: str, counter: str = "") -> None:
        """Train one setting in a child process; mark it finished in the manifest once it has written its model."""
        setting = self.runs[name]
        run = self.run_dir(name)
        if run.exists():  # a run that did not finish: start it again from scratch
            shutil.rmtree(run)
        argv = self.fit_argv(setting)
        command = shlex.join(argv)
        atomic_write_text(run / "command.txt", command + "\n")
        log = run / "fit.log"
        gamma = setting.gamma if setting.gamma is not None else self.base.model.gamma
        info("sweep", f"{counter} training {name} (layers {setting.layers or 'none'}, gamma {gamma}): {command}")
        started = time.perf_counter()
        code = run_logged(argv, log)
        seconds = time.perf_counter() - started
        if code != 0:
            raise TrainingRunError(f"training {name} failed (exit code {code}); its output is in {log}. Fix the "
                                   f"cause and run the sweep again (finished settings are kept), or repeat it alone: "
                                   f"{command}")
        hf = self.hf_dir(name)
        if not (hf / "config.json").is_file() and not (hf / "adapter_config.json").is_file():
            raise TrainingRunError(f"training {name} finished without writing {hf} (its output is in {log}); check "
                                   f"that the fit config does not change model.hf_output_dir")
        self.manifest["settings"][name] = {"status": "trained", "config_hash": self.config_hash(setting),
                                           "hf_model": str(hf), "fit_seconds": round(seconds, 1),
                                           "layers": setting.layers, "gamma": setting.gamma, "seed": setting.seed,
                                           "command": argv,
                                           "log": str(log), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(self.manifest_path, self.manifest)
        info("sweep", f"{name}: trained in {seconds:.0f} s")

    def num_layers(self) -> int:
        for name in self.runs:
            config = self.hf_dir(name) / "config.json"
            if config.is_file():
                data = json.loads(config.read_text())
                return int(data.get("num_hidden_layers") or data.get("n_layer"))
        raise RuntimeError("no trained model directory to read the number of layers from; train first")

    def evaluate(self, progress: bool = True) -> Dict[str, Any]:
        """Judge every setting against DPO and SFT (and DPO against SFT); write the table and the plot."""
        ev = evaluation  # its names load on first use
        options = self.spec.evaluate
        data_raw = {"source": self.base.data.source, "split": self.base.data.val_split,
                    "data_files": _to_plain(self.base.data.data_files), "subset": self.base.data.subset,
                    "format": self.base.data.format, **options.data}
        if not data_raw["split"]:
            raise ConfigError(f"{self.spec.path}: the fit config has no data.val_split, so the held-out split is "
                              f"unknown; set evaluate.data.split (and evaluate.data.source if it differs)")
        data = DataOptions(**data_raw)
        judge_raw = dict(options.judge)
        judge = ev.build_judge(judge_raw.pop("name"), **judge_raw)
        models = []
        if self.spec.baselines.get(SFT):
            models.append(ev.ModelSpec(SFT, self.base_model))
        for name in self.runs:
            if not self.is_trained(name):
                raise RuntimeError(f"{name} is not trained yet; run the sweep's training first")
            models.append(ev.ModelSpec(eval_name(name), str(self.hf_dir(name))))
        baselines = [b for b in (DPO, SFT) if b in self.arms or any(m.name == b for m in models)]
        pairs = []
        for seed in self.spec.seeds or [None]:
            # Each arm-seed against the same seed's DPO, and against the one (untrained) SFT model.
            names = {arm: arm if arm == SFT else eval_name(run_key(arm, seed)) for arm in [*self.arms, SFT]}
            pairs += [(names[s.name], names[b]) for s in self.spec.settings for b in baselines]
            if DPO in baselines and SFT in baselines:
                pairs.append((names[DPO], SFT))
        implicit = None
        if options.implicit is not None:
            implicit = dataclasses.replace(options.implicit)  # a copy: the spec stays as read
            if implicit.layers == "auto":
                # The trained layers of every setting, plus the evenly spaced ones.
                L = self.num_layers()
                trained = {layer for s in self.spec.settings for layer in resolve_layers(s.layers, L)}
                implicit.layers = sorted(set(ev.resolve_implicit_layers("auto", L)) | trained)
        results = ev.evaluate(models, self.out / "eval", judge=judge, data=data, generation=options.generation,
                              pairs=pairs, reference=self.base_model if implicit is not None else None,
                              implicit=implicit or ImplicitOptions(), confidence=options.confidence,
                              progress=progress)
        summary = self.summarize(results) if self.spec.seeds is None else summarize_seeds(self, results)
        atomic_write_json(self.out / "sweep_results.json", summary)
        atomic_write_text(self.out / "sweep_results.md", format_sweep_markdown(summary) + "\n")
        write_sweep_plot(summary, self.out / "sweep_plot.png")
        return summary

    def summarize(self, results: Mapping[str, Any]) -> Dict[str, Any]:
        """One row per setting (and the baselines) with its win rates, intervals and scores."""
        L = self.num_layers()
        pairs = {(p["first"], p["second"]): p for p in results["pairs"]}
        scores = {m["name"]: m.get("score") for m in results["models"]}
        implicit = results.get("implicit_reward") or {}
        layer_index = {layer: i for i, layer in enumerate(implicit.get("layers", []))}

        def implicit_at(name: str, layer: int) -> Optional[float]:
            values = implicit.get("models", {}).get(name)
            return None if values is None or layer not in layer_index else values["accuracy"][layer_index[layer]]

        rows = []
        for name, setting in self.runs.items():
            layers = resolve_layers(setting.layers, L)
            entry = self.manifest["settings"].get(name, {})
            row = {"name": name, "layers": layers, "k": len(layers),
                   "gamma": setting.gamma if setting.gamma is not None else float(self.base.model.gamma),
                   "relative_position": [round(layer / L, 4) for layer in layers],
                   "fit_seconds": entry.get("fit_seconds"), "score": scores.get(name),
                   "implicit_final": implicit_at(name, L),
                   "implicit_trained_layers": [implicit_at(name, layer) for layer in layers]}
            for baseline in (DPO, SFT):
                p = pairs.get((name, baseline))
                row[f"vs_{baseline}"] = None if p is None else {
                    k: p[k] for k in ("win_rate", "ci_low", "ci_high", "ci_method", "wins", "ties", "losses",
                                      "prompts", "invalid")}
            rows.append(row)
        return {"num_layers": L, "base_model": self.base_model, "judge": results["judge"],
                "prompts": results["prompts"], "generation": results["generation"], "confidence": results["confidence"],
                "ci_method": results["ci_method"], "sft_score": scores.get(SFT), "rows": rows,
                "implicit_layers": implicit.get("layers"), "evaluation": str(self.out / "eval" / "results.md")}


def _run(spec: SweepSpec, *, train_only: bool, progress: bool) -> Optional[Dict[str, Any]]:
    started = time.perf_counter()
    sweep = Sweep(spec)
    sweep.train()
    if train_only:
        return None
    summary = sweep.evaluate(progress=progress)
    summary["wall_time_s_this_invocation"] = round(time.perf_counter() - started, 1)
    return summary


def run_sweep(config: str | Path, *, output_dir: Optional[str] = None, train_only: bool = False,
              progress: bool = True) -> Optional[Dict[str, Any]]:
    """Train what is missing of the sweep file ``config``, then evaluate; returns the summary (None: ``train_only``)."""
    return _run(load_spec(config, output_dir), train_only=train_only, progress=progress)


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, Any]]:
    """Entry point of ``lit-idpo sweep`` (``--help`` lists the options, ``--print_config`` prints a full sweep file)."""
    cfg, sweep_file = parse_args(sys.argv[1:] if argv is None else argv)
    spec = spec_from_config(cfg, sweep_file)
    if cfg.dry_run:
        print("\n".join(Sweep(spec).plan()))
        return None
    started = time.perf_counter()
    summary = _run(spec, train_only=cfg.train_only, progress=cfg.progress)
    if summary is not None:
        print(format_sweep_markdown(summary))
        print(f"\nWritten: {spec.output_dir / 'sweep_results.md'}, {spec.output_dir / 'sweep_plot.png'} "
              f"({time.perf_counter() - started:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
