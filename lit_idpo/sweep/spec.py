"""The sweep file: its options as dataclasses (the ``lit-idpo sweep`` parser is built from them), and their checks.

``lit-idpo sweep --print_config`` prints a complete sweep file with every default; ``--help`` lists
each option with its description. :func:`load_spec` reads a file into a :class:`SweepSpec`, the
checked form the sweep runs from. Errors are :class:`lit_idpo.errors.ConfigError` naming the key
and the fix.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from argparse import ArgumentError
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from jsonargparse import ActionYesNo, ArgumentParser, Namespace

from lit_idpo.errors import ConfigError, add_progress_flag, command_parser, config_error, one_line
from lit_idpo.evaluation.options import DataOptions, GenerationOptions, ImplicitOptions

SFT, DPO = "sft", "dpo"
# Fit options that the sweep sets itself for each run (a setting's overrides may not).
SWEEP_OWNED = ("model.layers", "model.gamma", "model.hf_output_dir", "trainer.default_root_dir")
# ... and, with a ``seeds`` list, every seed of the training (the same value for every arm of one seed).
SEED_KEYS = ("seed_everything", "data.seed")
SEEDS_FIX = "give a list of distinct non-negative integers, e.g. seeds: [0, 1, 2] (or leave seeds out: one run each)"


@dataclass
class SettingConfig:
    """One training run of the sweep.

    Args:
        layers: the intermediate layers (K = their number), e.g. ``[21]`` or ``[14, 21]``; 1..L, or negative
            from the end. Plain DPO is the ``dpo`` baseline; ``[]`` with a ``name`` and ``overrides`` is a variant
            of it (e.g. another precision), judged against the same seed's ``dpo``.
        gamma: the weight of the final layer, in [0, 1); null: the fit config's ``model.gamma``.
        name: the run's name (its folder under ``runs/``); null: made from layers and gamma, e.g. ``L1+3-g0.25``.
        overrides: extra fit options for this run only, as dotted keys, e.g. ``{model.beta: 0.2}``.
    """

    layers: List[int]
    gamma: Optional[float] = None
    name: Optional[str] = None
    # ``dict``, not Dict[str, Any]: jsonargparse then keeps a class_path entry as written instead of adding
    # every init_args default (and, on instantiation, building the object).
    overrides: dict = field(default_factory=dict)


@dataclass
class GridConfig:
    """Settings made as a product: every layer list with every gamma (added after ``settings``).

    Args:
        layers: the layer lists, e.g. ``[[5], [21], [14, 21]]``.
        gamma: the gammas; ``[null]``: the fit config's ``model.gamma``.
    """

    layers: List[List[int]] = field(default_factory=list)
    gamma: List[Optional[float]] = field(default_factory=lambda: [None])


@dataclass
class BaselinesConfig:
    """The runs every setting is compared with.

    Args:
        dpo: train plain DPO (the same fit, gamma 1 and no intermediate layers) and judge every setting against it.
        sft: judge every setting against the untrained model (the fit's ``model.model``).
    """

    dpo: bool = True
    sft: bool = True


@dataclass
class SweepEvaluateConfig:
    """How the trained runs are judged (the options of ``lit-idpo evaluate``, see its ``--help``).

    Args:
        data: prompt options (``source``, ``split``, ``data_files``, ``subset``, ``format``, ``limit``,
            ``on_bad_row``) on top of the fit's ``data.source`` and its held-out ``data.val_split``.
        generation: how responses are generated.
        judge: the judge's ``name`` (``rule``, ``openai``, ``reward-model``) and its options, e.g.
            ``{name: openai, base_url: ..., model: gpt-4o}``.
        implicit: implicit-reward accuracy per layer; ``layers: auto`` adds every trained layer to the 8 spaced
            ones. null: not computed.
        confidence: the confidence level of the win-rate intervals.
    """

    data: Dict[str, Any] = field(default_factory=dict)
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    judge: Dict[str, Any] = field(default_factory=lambda: {"name": "rule"})
    implicit: Optional[ImplicitOptions] = field(default_factory=ImplicitOptions)
    confidence: float = 0.95


@dataclass
class SweepConfig:
    """A sweep: train a list of Intermediate DPO settings from one base fit config and judge each against DPO and SFT.

    Args:
        output_dir: where everything goes (relative to the working directory).
        base_config: a ``lit-idpo fit`` config file; a relative path is read from the sweep file's folder.
        fit: fit options on top of ``base_config``, nested as in a fit config (e.g. ``{trainer: {max_steps: 60}}``).
        settings: the Intermediate DPO runs.
        grid: more runs, the product of its lists (null: none).
        baselines: which baselines to train / compare with.
        evaluate: how the runs are judged.
        seeds: train every setting and the DPO baseline once per seed (e.g. ``[0, 1, 2]``): the seed sets
            ``seed_everything`` and ``data.seed`` (the order of the training pairs), the same for every arm,
            and the report gives intervals over the training runs. null: one run per setting with the fit
            config's seeds.
        accelerator: where trainings and evaluation run: ``cpu``, ``gpu`` (CUDA) or ``auto`` (a GPU when there is
            one); sets the fit's ``trainer.accelerator`` and the evaluation's ``generation.device`` (``cpu``,
            ``cuda``, ``auto``). null: as the fit config and ``evaluate.generation.device`` say.
    """

    output_dir: Optional[str] = None
    base_config: Optional[str] = None
    fit: dict = field(default_factory=dict)  # ``dict``: kept as written (see SettingConfig.overrides)
    settings: List[SettingConfig] = field(default_factory=list)
    grid: Optional[GridConfig] = None
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    evaluate: SweepEvaluateConfig = field(default_factory=SweepEvaluateConfig)
    seeds: Optional[List[int]] = None
    accelerator: Optional[str] = None


@dataclass
class Setting:
    """One training run of the sweep: intermediate ``layers`` (K = their number), ``gamma``, extra fit options,
    and the ``seed`` it is trained with (None: the fit config's seeds; a sweep without ``seeds``)."""

    name: str
    layers: List[int]
    gamma: Optional[float] = None
    overrides: Dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None

    @property
    def k(self) -> int:
        return len(self.layers)


@dataclass
class SweepSpec:
    """A checked sweep file: resolved paths, every setting named (grid expanded), the evaluation options."""

    path: Optional[Path]
    output_dir: Path
    base_config: Optional[Path]
    fit: Dict[str, Any]
    settings: List[Setting]
    baselines: Dict[str, bool]
    evaluate: SweepEvaluateConfig
    seeds: Optional[List[int]] = None


def build_parser() -> ArgumentParser:
    """The ``lit-idpo sweep`` parser: the sweep file's options (:class:`SweepConfig`) and the command's flags."""
    parser = command_parser(
        "sweep", config_help="a sweep file (examples in configs/sweeps/)",
        description="Train a list of Intermediate DPO settings (layers, K, gamma) from one base config, judge each "
                    "against plain DPO and the untrained SFT model, and write a table and a plot. Re-running resumes: "
                    "finished settings (manifest.json) are skipped and cached generations reused. Each training runs "
                    "as its own `lit-idpo fit` process; its command and log are in output_dir/runs/<name>/.")
    parser.add_class_arguments(SweepConfig, None, fail_untyped=True)
    parser.add_argument("--dry_run", action=ActionYesNo, default=False,
                        help="print each run's state and exact fit command (writing the config files those commands "
                             "read into output_dir); train nothing")
    parser.add_argument("--train_only", action=ActionYesNo, default=False,
                        help="train what is missing, do not evaluate")
    add_progress_flag(parser)
    return parser


def parse_args(argv: Sequence[str]):
    """Parse ``lit-idpo sweep`` arguments; returns (jsonargparse Namespace, the last sweep file read or None)."""
    argv = list(argv)
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as err:
        files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
        where = f"sweep config {', '.join(map(str, files))}: " if files else ""
        if 'key "seeds"' in str(err):
            raise ConfigError(f"{where}seeds: {SEEDS_FIX}; {one_line(str(err))}") from err
        raise config_error(err, "sweep", where=where) from err
    files = [f for f in (cfg.get("config") or []) if f is not None]
    return cfg, (Path(os.fspath(files[-1])) if files else None)


def _setting_name(layers: Sequence[int], gamma: Optional[float]) -> str:
    name = "L" + "+".join(str(layer) for layer in layers) if layers else "L-none"
    return name + (f"-g{gamma:g}" if gamma is not None else "")


def _check_setting(where: str, raw: SettingConfig) -> Setting:
    layers = raw.layers
    gamma = raw.gamma
    if not layers:
        # A variant of plain DPO (another precision, beta, ...) is a setting too, judged against the 'dpo' baseline
        # of the same seed; without overrides it would be that baseline again.
        if not raw.overrides or not raw.name:
            raise ConfigError(f"{where}.layers={layers!r}; give a non-empty list of intermediate layer numbers, e.g. "
                              f"[21] (plain DPO is the 'dpo' baseline; a variant of it needs a name and overrides, "
                              f"e.g. {{name: dpo-bf16, layers: [], overrides: {{trainer.precision: bf16-mixed}}}})")
        if gamma not in (None, 1.0):
            raise ConfigError(f"{where}.gamma={gamma!r} with no layers; plain DPO has gamma 1 (leave gamma out)")
        gamma = 1.0
    elif gamma is not None and not 0.0 <= gamma < 1.0:
        raise ConfigError(f"{where}.gamma={gamma!r}; it must be in [0, 1) (1 is plain DPO, the 'dpo' baseline)")
    for key in raw.overrides or {}:
        if key in SWEEP_OWNED:
            raise ConfigError(f"{where}.overrides sets {key!r}, which the sweep sets itself; use the setting's own "
                              f"layers / gamma keys")
    name = raw.name or _setting_name(layers, gamma)
    return Setting(str(name), list(layers), None if gamma is None else float(gamma), dict(raw.overrides or {}))


def _resolve_base(base: Optional[str], sweep_file: Optional[Path], where: str) -> Optional[Path]:
    if base is None:
        return None
    candidate = Path(base)
    if not candidate.is_absolute() and sweep_file is not None:
        candidate = sweep_file.parent / base
        if not candidate.is_file() and Path(base).is_file():  # a path given relative to the working directory
            candidate = Path(base)
    if not candidate.is_file():
        folder = sweep_file.parent if sweep_file is not None else Path.cwd()
        raise ConfigError(f"{where}: base_config {base!r} not found (relative paths are read from {folder})")
    return candidate.resolve()


def _plain(value: Any) -> Any:
    # jsonargparse Namespaces (a class_path entry, a dataclass group) back to plain dicts and lists, as written.
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _build_config(cfg: Namespace) -> SweepConfig:
    # The dataclasses built here from the parsed values (not by jsonargparse's instantiation, which would also
    # build any class_path object inside the fit options).
    ev = cfg.evaluate
    return SweepConfig(
        output_dir=cfg.output_dir, base_config=cfg.base_config, fit=_plain(cfg.fit),
        settings=[SettingConfig(**_plain(s)) for s in cfg.settings or []],
        grid=None if cfg.grid is None else GridConfig(**_plain(cfg.grid)),
        baselines=BaselinesConfig(**_plain(cfg.baselines)),
        evaluate=SweepEvaluateConfig(
            data=_plain(ev.data), generation=GenerationOptions(**_plain(ev.generation)), judge=_plain(ev.judge),
            implicit=None if ev.implicit is None else ImplicitOptions(**_plain(ev.implicit)),
            confidence=ev.confidence),
        seeds=_plain(cfg.get("seeds")), accelerator=cfg.get("accelerator"))


def _check_seeds(where: str, seeds: Any, settings: Sequence[Setting]) -> Optional[List[int]]:
    if seeds is None:
        return None
    fix = SEEDS_FIX
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise ConfigError(f"{where}: seeds={seeds!r}; {fix}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ConfigError(f"{where}: seeds has {bad!r}, not a non-negative integer; {fix}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds={list(seeds)!r} lists a seed twice; {fix}")
    for s in settings:
        owned = sorted(set(s.overrides) & set(SEED_KEYS))
        if owned:
            raise ConfigError(f"{where}: setting {s.name!r} overrides {owned}, which seeds sets for every run; "
                              f"remove them from its overrides (or leave seeds out)")
    return [int(s) for s in seeds]


# The sweep's accelerator switch -> (the fit's trainer.accelerator, the evaluation's generation.device).
ACCELERATORS = {"cpu": ("cpu", "cpu"), "gpu": ("gpu", "cuda"), "auto": ("auto", "auto")}


def _apply_accelerator(where: str, accelerator: Optional[str], fit: Dict[str, Any],
                       evaluate: SweepEvaluateConfig) -> tuple:
    # One switch for both sides: trainings (the child fits' trainer.accelerator, through fit_overrides.yaml) and
    # the evaluation in this process (generation and implicit reward run on generation.device).
    if accelerator is None:
        return fit, evaluate
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"{where}: accelerator={accelerator!r}; choose one of {', '.join(ACCELERATORS)} (or leave "
                          f"it out: the fit config's trainer.accelerator and evaluate.generation.device)")
    trainer, device = ACCELERATORS[accelerator]
    given = (fit.get("trainer") or {}).get("accelerator")
    if given is not None and given != trainer:
        raise ConfigError(f"{where}: accelerator={accelerator!r} and fit.trainer.accelerator={given!r} disagree; "
                          f"keep one of them")
    fit = {**fit, "trainer": {**(fit.get("trainer") or {}), "accelerator": trainer}}
    generation = dataclasses.replace(evaluate.generation, device=device)
    return fit, dataclasses.replace(evaluate, generation=generation)


def spec_from_config(cfg, sweep_file: Optional[Path] = None) -> SweepSpec:
    """Check a parsed sweep configuration (a :func:`parse_args` Namespace) and resolve it into a :class:`SweepSpec`."""
    where = f"sweep config {sweep_file}" if sweep_file is not None else "sweep config"
    config = cfg if isinstance(cfg, SweepConfig) else _build_config(cfg)
    base_path = _resolve_base(config.base_config, sweep_file, where)
    if base_path is None and not config.fit:
        raise ConfigError(f"{where}: give base_config (a fit config) and/or fit (fit options)")
    settings = [_check_setting(f"settings[{i}]", s) for i, s in enumerate(config.settings)]
    if config.grid is not None:
        if not config.grid.layers:
            raise ConfigError("grid.layers is empty; give a list of layer lists, e.g. [[5], [21], [27]]")
        for i, (layers, gamma) in enumerate(itertools.product(config.grid.layers, config.grid.gamma or [None])):
            settings.append(_check_setting(f"grid[{i}]", SettingConfig(layers=layers, gamma=gamma)))
    if not settings:
        raise ConfigError(f"{where}: no settings; give settings and/or grid")
    names = [s.name for s in settings]
    clashes = sorted({n for n in names if names.count(n) > 1} | ({SFT, DPO} & set(names)))
    if clashes:
        raise ConfigError(f"{where}: setting name(s) {clashes} are used twice or clash with the baselines "
                          f"'sft'/'dpo'; give the settings names")
    evaluate = config.evaluate
    data_keys = {f.name for f in fields(DataOptions)}
    unknown = sorted(set(evaluate.data) - data_keys)
    if unknown:
        raise ConfigError(f"{where}: evaluate.data has unknown key(s) {unknown}; allowed: {sorted(data_keys)}")
    if not evaluate.judge.get("name"):
        raise ConfigError(f"{where}: evaluate.judge needs a name (rule, openai or reward-model)")
    if not config.output_dir:
        raise ConfigError(f"{where}: give output_dir (in the file or with --output_dir)")
    seeds = _check_seeds(where, config.seeds, settings)
    fit, evaluate = _apply_accelerator(where, config.accelerator, dict(config.fit), evaluate)
    return SweepSpec(path=sweep_file, output_dir=Path(config.output_dir), base_config=base_path, fit=fit,
                     settings=settings, baselines={DPO: config.baselines.dpo, SFT: config.baselines.sft},
                     evaluate=evaluate, seeds=seeds)


def load_spec(path: str | Path, output_dir: Optional[str] = None) -> SweepSpec:
    """Read and check a sweep file (``output_dir`` overrides the file's); errors name the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep config {path} does not exist; give a sweep file (examples in configs/sweeps/)")
    argv = ["--config", str(path)] + (["--output_dir", str(output_dir)] if output_dir else [])
    cfg, _ = parse_args(argv)
    return spec_from_config(cfg, path)
