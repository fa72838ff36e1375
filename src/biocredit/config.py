"""Load, validate and resolve config.yaml.

Validation gives ONE line naming the key path and the problem, before any compute. The JSON schema
(``config.schema.yaml``, shipped with the package) checks shape and types; :func:`check_semantics`
checks what a schema cannot (rule names and their parameters, reported methods, input sizes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

#: yaml.safe_load's loader in libyaml's C implementation where PyYAML has it (the same documents, ~10x faster on
#: config.yaml: every command and every Snakemake parse reads it)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SCHEMA_PATH = Path(str(resources.files("biocredit") / "config.schema.yaml"))
SCALES = ("smoke", "quick", "paper")
INPUT_SIZE = {"mnist": 784, "fashion_mnist": 784, "cifar10": 3072}
N_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10}
# Figure kinds drawn from the first seed's final weights (via the committed results/<scale>/figure_data/*.npz)
WEIGHT_FIGURE_KINDS = ("receptive_fields", "reconstructions", "features")

# Train settings an experiment inherits when it does not set them.
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 10,
    "reduction": "sum",
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "weight_decay_mode": "l2",
    "shuffle": True,
    "angle_every": 100,
}


class ConfigError(ValueError):
    """A one-line, user-facing configuration error."""


class DataError(RuntimeError):
    """One-line, user-facing message naming the file/dataset and the fix (raised by biocredit.data)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def load_schema() -> dict:
    return yaml.load(SCHEMA_PATH.read_text(), Loader=YAML_LOADER)


def validate(cfg: Mapping, source: str = "config.yaml", *, rules: bool = True) -> None:
    """Raise ConfigError (one line) if ``cfg`` breaks the schema or the semantic checks.

    ``rules=False`` skips the learning-rule checks (rule names, their params): they import the rule registry,
    hence torch (~1.3 s), which the stages that only read finished runs (aggregate, figures, compare) never
    need; the config those stages read was checked in full by the Snakefile and by every training job."""
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), e.message))
    if errors:
        # The deepest error is the most specific one ("lr: -1 is less than the minimum"), not "not valid under any".
        err = max(errors, key=lambda e: len(e.absolute_path))
        message = err.message.splitlines()[0]
        if err.validator == "additionalProperties" and err.schema.get("properties"):
            unknown = sorted(set(err.instance) - set(err.schema["properties"]))
            message = (f"{', '.join(map(repr, unknown))}: no such key here; the keys this place takes: "
                       f"{', '.join(err.schema['properties'])}")
        if err.validator == "oneOf" and len(err.absolute_path) >= 2 and err.absolute_path[-2] == "claims":
            given = sorted(set(err.instance) & {"lower", "higher", "below", "above", "below_metric"})
            message = (f"has {', '.join(given) or 'no comparison'}; a claim needs exactly one comparison: lower + "
                       "higher, lower + below, lower + below_metric, or higher + above")
        raise ConfigError(f"{source}: {_key_path(err.absolute_path)}: {message}")
    check_semantics(cfg, source, rules=rules)


def _check_sizes(exp: Mapping, where: str, sizes: list[int]) -> None:
    dataset = exp["dataset"]
    if dataset.startswith("synthetic_"):
        task = exp.get("task")
        if task is None:
            raise ConfigError(f"{where}.task: a synthetic dataset needs its task settings (n_train, n_test, ...)")
        n_in, n_out = (task["sizes"][0], task["sizes"][-1]) if "sizes" in task else (task.get("n_in"), task.get("n_out"))
        if (n_in is not None and sizes[0] != n_in) or (n_out is not None and sizes[-1] != n_out):
            raise ConfigError(f"{where}.net.sizes: {sizes} does not match the task's inputs/outputs ({n_in}, {n_out})")
        return
    if sizes[0] != INPUT_SIZE[dataset]:
        raise ConfigError(
            f"{where}.net.sizes: first size {sizes[0]} does not match {dataset} inputs "
            f"({INPUT_SIZE[dataset]}); set it to {INPUT_SIZE[dataset]}"
        )
    if exp.get("target", "labels") == "input":  # an auto-encoder reconstructs its input
        if sizes[-1] != INPUT_SIZE[dataset]:
            raise ConfigError(f"{where}.net.sizes: an auto-encoder (target: input) needs a last size equal to "
                              f"the {INPUT_SIZE[dataset]} inputs, not {sizes[-1]}")
        return
    if sizes[-1] != N_CLASSES[dataset]:
        raise ConfigError(f"{where}.net.sizes: last size {sizes[-1]} must be the {N_CLASSES[dataset]} classes")


def _check_tied(net: Mapping, where: str) -> None:
    """Tied weights (W_2 = W_1ᵀ) need an auto-encoder's shape [n, n_hidden, n]."""
    sizes = net["sizes"]
    if net.get("tied") and (len(sizes) != 3 or sizes[0] != sizes[2]):
        raise ConfigError(f"{where}.net.tied: weight tying needs an auto-encoder's sizes [n, n_hidden, n], not {sizes}; "
                          "set tied: false")


def _check_transmission(net: Mapping, where: str) -> None:
    """One entry per hidden layer in every transmission list; sampled units need probabilities (sigmoid)."""
    n_hidden = len(net["sizes"]) - 2
    for key in ("transmission", "test_transmission", "feedback_transmission"):
        kinds = net.get(key)
        if kinds is not None and len(kinds) != n_hidden:
            raise ConfigError(f"{where}.net.{key}: {kinds} needs one entry per hidden layer ({n_hidden})")
        if kinds and "bernoulli" in kinds and net["hidden_activation"] != "sigmoid":
            raise ConfigError(f"{where}.net.{key}: bernoulli units sample their activity as a probability; "
                              f"set hidden_activation: sigmoid (not {net['hidden_activation']})")


#: Scale settings the trainer of image datasets reads and the synthetic tasks' ensemble trainer does not: why.
IMAGE_ONLY_SCALE_KEYS = {
    "train_eval_subset": "a synthetic task's training set is small enough to evaluate whole (remove the key)",
    "eval_every_epochs": "synthetic tasks set their evaluation points with train.eval_every_examples",
}


def _check_rule(RULES: Mapping, rule: str, method: Mapping, where: str) -> None:
    if rule not in RULES:
        raise ConfigError(f"{where}.rule: unknown learning rule {rule!r}; known: {', '.join(sorted(RULES))}")
    try:
        RULES[rule].resolve_params(method.get("params", {}))
    except (KeyError, TypeError, ValueError) as e:
        why = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) adds quotes
        raise ConfigError(f"{where}.params: {why}") from None


def check_semantics(cfg: Mapping, source: str = "config.yaml", *, rules: bool = True) -> None:
    RULES = None
    if rules:
        from biocredit.rules import RULES

    for ename, exp in cfg["experiments"].items():
        where = f"{source}: experiments.{ename}"
        _check_sizes(exp, where, exp["net"]["sizes"])
        _check_transmission(exp["net"], where)
        for mname, method in exp["methods"].items():
            rule = method["rule"]
            if "sizes" in method.get("net", {}):
                _check_sizes(exp, f"{where}.methods.{mname}", method["net"]["sizes"])
            net = deep_merge(exp["net"], method.get("net", {}))
            if method.get("net"):
                _check_transmission(net, f"{where}.methods.{mname}")
            _check_tied(net, f"{where}.methods.{mname}" if "tied" in method.get("net", {}) else where)
            if rule == "shallow" and net.get("tied"):
                raise ConfigError(f"{where}.methods.{mname}: shallow learning keeps the hidden layer fixed, but a tied "
                                  "decoder would move it; give this method net: {tied: false}")
            if RULES is not None:
                _check_rule(RULES, rule, method, f"{where}.methods.{mname}")
        if exp["dataset"].startswith("synthetic_"):
            for sname, sc in exp["scales"].items():
                if bad := sorted(IMAGE_ONLY_SCALE_KEYS.keys() & sc.keys()):
                    why = IMAGE_ONLY_SCALE_KEYS[bad[0]]
                    raise ConfigError(f"{where}.scales.{sname}.{bad[0]}: only for image datasets; {why}")
        for sname, sc in exp["scales"].items():
            if "valid_subset" in sc and not exp.get("valid_size"):
                raise ConfigError(f"{where}.scales.{sname}.valid_subset: the experiment holds out no validation set; "
                                  "set valid_size or remove valid_subset")
        for k, rep in enumerate(exp.get("reported", [])):
            if rep.get("at") == "valid_best" and not exp.get("valid_size"):
                raise ConfigError(f"{where}.reported.{k}.at: valid_best reads each run at its lowest validation "
                                  "error, but the experiment holds out no validation set; set valid_size or at: final")
        if sel := exp.get("length_selection"):
            w = f"{where}.length_selection"
            if sel["method"] not in exp["methods"]:
                raise ConfigError(f"{w}.method: {sel['method']!r} is not a method of this experiment "
                                  f"({', '.join(exp['methods'])})")
            top = max(sc["seeds"] for sc in exp["scales"].values())
            if sel["seed"] < top:
                raise ConfigError(f"{w}.seed: {sel['seed']} is an evaluation seed (seeds 0..{top - 1} are trained for "
                                  f"results); choose a selection seed >= {top}")
            if sel.get("smooth", 1) % 2 == 0:
                raise ConfigError(f"{w}.smooth: {sel['smooth']} must be odd (a centred window), e.g. {sel['smooth'] + 1}")
            if exp["dataset"].startswith("synthetic_"):
                raise ConfigError(f"{w}: needs an image dataset (it holds out training images)")
            if sel.get("sets") is not None and sel["sets"] not in exp["scales"]:
                raise ConfigError(f"{w}.sets: {sel['sets']!r} is not a scale; choose smoke, quick or paper")
        if "probe" in exp and exp["dataset"].startswith("synthetic_"):
            raise ConfigError(f"{where}.probe: a probe needs class labels; {exp['dataset']} has none")
        if exp.get("target") == "input" and exp["dataset"].startswith("synthetic_"):
            raise ConfigError(f"{where}.target: 'input' (an auto-encoder) needs an image dataset")
        for i, claim in enumerate(exp.get("claims", [])):
            for m in [*claim.get("lower", []), *claim.get("higher", [])]:
                if m not in exp["methods"]:
                    raise ConfigError(f"{where}.claims.{i}: {m!r} is not a method of this experiment ({', '.join(exp['methods'])})")
            if "reach" in claim and ("higher" not in claim or "lower" not in claim or claim.get("at") == "first"):
                raise ConfigError(f"{where}.claims.{i}.reach: compares how soon `lower` and `higher` methods reach the "
                                  "value; give both lists and no at: first")
        for mname in exp["methods"]:
            tc = deep_merge(TRAIN_DEFAULTS, deep_merge(exp.get("train", {}), exp["methods"][mname].get("train", {})))
            if (early := tc.get("early_rows")) and (early["every"] > early["until"]
                                                    or early["every"] % tc["batch_size"]):
                raise ConfigError(f"{where}.train.early_rows: every = {early['every']} must be at most until = "
                                  f"{early['until']} and a multiple of the batch size ({tc['batch_size']})")
        for i, fig in enumerate(exp.get("figures", [])):
            for m in fig.get("methods", []):
                if m not in exp["methods"]:
                    raise ConfigError(f"{where}.figures.{i}.methods: {m!r} is not a method of this experiment")
            if fig["kind"] == "curves" and not (fig.get("metric") or fig.get("metrics")):
                raise ConfigError(f"{where}.figures.{i}: a 'curves' figure needs 'metric' or 'metrics'")
        for i, rep in enumerate(exp.get("reported", [])):
            if rep["method"] not in exp["methods"]:
                raise ConfigError(
                    f"{where}.reported.{i}.method: {rep['method']!r} is not a method of this experiment "
                    f"({', '.join(exp['methods'])})"
                )


def load_config(path: str | os.PathLike = "config.yaml", overrides: Mapping | None = None, *,
                rules: bool = True) -> dict:
    """Read ``path``, apply ``overrides`` (``{'scale': 'smoke'}``, dotted keys allowed) and validate
    (``rules``: see :func:`validate`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found; pass --config PATH or run from the repository root")
    try:
        cfg = yaml.load(path.read_text(), Loader=YAML_LOADER)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    made = {key: set_dotted(cfg, key, value) for key, value in (overrides or {}).items()}
    try:
        validate(cfg, str(path), rules=rules)
    except ConfigError as e:
        # A key the schema does not know, made by a --set (a typo on the command line), names that --set.
        for key, new in made.items():
            where, _, name = new.rpartition(".")
            if new and str(e).startswith(f"{path}: {where or '<top level>'}: {name!r}: no such key"):
                raise ConfigError(f"--set {key}: {e}") from None
        raise
    return cfg


def set_dotted(cfg: dict, dotted: str, value: Any) -> str:
    """cfg[a][b]... = value for the key 'a.b...'; a number indexes a list (claims.3.text). Missing mappings are
    made; a path through a list index out of range or through a plain value is a one-line ConfigError.

    Returns the first key it had to make, as a dotted path ('' if none), for error messages."""
    made = ""
    node: Any = cfg
    parts = dotted.split(".")
    for depth, p in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not (p.isdigit() and int(p) < len(node)):
                raise ConfigError(f"--set {dotted}: {where} is not an item of a list of {len(node)} (use 0..{len(node) - 1})")
            if last:
                node[int(p)] = value
            else:
                node = node[int(p)]
        elif isinstance(node, dict):
            if p not in node and not made:
                made = where
            if last:
                node[p] = value
            else:
                node = node.setdefault(p, {})
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[:depth])} is a value ({node!r}), not a mapping")
    return made


def deep_merge(base: Mapping, over: Mapping) -> dict:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def run_dir(results_dir: str | os.PathLike, scale: str, experiment: str, method: str, seed: int) -> Path:
    """A run's folder: ``<results_dir>/<scale>/runs/<experiment>/<method>/seed<seed>``."""
    return Path(results_dir) / scale / "runs" / experiment / method / f"seed{seed}"


def seeds_label(seeds: Sequence[int]) -> str:
    """``0-19`` for a contiguous range, else ``0_3_7`` (an ensemble job's name for its seeds)."""
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return "_".join(map(str, seeds))


def seeds(cfg: Mapping, experiment: str, scale: str | None = None) -> list[int]:
    scale = scale or cfg["scale"]
    return list(range(cfg["experiments"][experiment]["scales"][scale]["seeds"]))


def resolve_run(cfg: Mapping, experiment: str, method: str, seed: int, scale: str | None = None,
                *, rule_defaults: bool = True) -> dict:
    """The fully resolved settings of one training run: everything that determines its numbers.

    ``rule_defaults=False``: ``params`` holds only what the config sets, without the rule's defaults (no rule
    registry, so no torch import: for readers of finished runs, :func:`settings_changed`)."""
    scale = scale or cfg["scale"]
    if experiment not in cfg["experiments"]:
        raise ConfigError(f"experiments.{experiment}: no such experiment; known: {', '.join(cfg['experiments'])}")
    exp = cfg["experiments"][experiment]
    if method not in exp["methods"]:
        raise ConfigError(f"experiments.{experiment}.methods.{method}: no such method; known: {', '.join(exp['methods'])}")
    m = exp["methods"][method]
    train = deep_merge(deep_merge(TRAIN_DEFAULTS, exp["train"]), m.get("train", {}))
    scale_settings = dict(exp["scales"][scale])
    net_at_scale = {"test_passes": scale_settings.pop("test_passes")} if "test_passes" in scale_settings else {}
    train.pop("ensemble_seeds", None)  # how seeds are scheduled, not what they compute: kept out of the hash
    return {
        "experiment": experiment,
        "method": method,
        "seed": int(seed),
        "scale": scale,
        "dataset": exp["dataset"],
        "preprocess": exp.get("preprocess", "unit_interval"),
        "task": exp.get("task"),
        "valid_size": exp.get("valid_size"),
        **({"target": exp["target"]} if "target" in exp else {}),  # absent keys keep older runs' config hashes
        **({"probe": exp["probe"]} if "probe" in exp else {}),
        "net": deep_merge(deep_merge(deep_merge({"bias": True, "init": {"distribution": "uniform", "scale": 0.05}},
                                                exp["net"]), m.get("net", {})), net_at_scale),
        "loss": exp["loss"],
        "train": train,
        "rule": m["rule"],
        "params": _rule_params(m) if rule_defaults else dict(m.get("params", {})),
        **scale_settings,
    }


def _rule_params(method: Mapping) -> dict:
    from biocredit.rules import RULES

    return RULES[method["rule"]].resolve_params(method.get("params", {}))


def settings_changed(cfg: Mapping, experiment: str, method: str, seed: int, run_config: Mapping) -> list[str]:
    """The settings (dotted keys, ``key: then -> now``) in which a finished run's ``run_config`` differs from
    what the config now resolves for that run; [] if none. A rule parameter left at the rule's default is
    compared only where the config sets it (without the rule registry; a changed default is a code change,
    which the run's git commit records)."""
    now = resolve_run(cfg, experiment, method, seed, rule_defaults=False)
    then = dict(run_config)
    then["params"] = {k: v for k, v in (then.get("params") or {}).items() if k in now["params"]}
    out: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    walk(then, now, "")
    return out


def ensemble_seeds(cfg: Mapping, experiment: str, method: str) -> bool:
    """True if the seeds of this cell train together in one job (:mod:`biocredit.ensemble`): the top-level
    ``ensembles`` switch is on (default) and ``train.ensemble_seeds`` is set (experiment or method), or the switch
    says ``all``; and the rule and task have a stacked form. Otherwise every seed is a job of its own."""
    mode = cfg.get("ensembles", True)
    if not mode:
        return False
    exp = cfg["experiments"][experiment]
    m = exp["methods"][method]
    if mode != "all" and not {**exp.get("train", {}), **m.get("train", {})}.get("ensemble_seeds", False):
        return False
    from biocredit.ensemble import why_not_ensemble

    return why_not_ensemble(resolve_run(cfg, experiment, method, 0)) is None


def config_hash(run_cfg: Mapping) -> str:
    """Short SHA-256 of the canonical JSON of a resolved run config (provenance and checkpoint identity)."""
    return hashlib.sha256(json.dumps(run_cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
