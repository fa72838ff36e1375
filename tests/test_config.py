"""config.yaml: schema + semantic validation (one line naming the key), run resolution, config hashes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO_CONFIG, method_with_rule, mnist_experiment, one_line, run_cli

from biocredit import cli
from biocredit.config import ConfigError, config_hash, load_config, resolve_run, seeds, validate

RAW = yaml.safe_load(REPO_CONFIG.read_text())
EXP = mnist_experiment(RAW)
FA = method_with_rule(RAW, EXP, "feedback_alignment")
BP = method_with_rule(RAW, EXP, "backprop")


def raw_config() -> dict:
    return copy.deepcopy(RAW)


def test_repository_config_validates_and_every_run_resolves():
    cfg = load_config(REPO_CONFIG)
    assert cfg["experiments"], "config.yaml defines no experiment"
    for scale in ("smoke", "quick", "paper"):
        for name, exp in cfg["experiments"].items():
            for method in exp["methods"]:
                for seed in seeds(cfg, name, scale):
                    run = resolve_run(cfg, name, method, seed, scale)
                    assert run["epochs"] == exp["scales"][scale]["epochs"] and run["seed"] == seed


def _set(path: str, value) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        node = cfg
        *parents, last = path.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value

    return mutate


def _misspell_lr(cfg: dict) -> None:
    cfg["experiments"][EXP]["train"]["lerning_rate"] = cfg["experiments"][EXP]["train"].pop("lr")


# (id, mutation of config.yaml, key path the message must name, word(s) the message must contain)
BAD_INPUTS = [
    ("misspelled key", _misspell_lr, f"experiments.{EXP}.train", "lerning_rate"),
    ("wrong type", _set(f"experiments.{EXP}.train.batch_size", "ten"), f"experiments.{EXP}.train.batch_size", "ten"),
    ("unknown rule", _set(f"experiments.{EXP}.methods.{FA}.rule", "feedback_alinment"),
     f"experiments.{EXP}.methods.{FA}.rule", "feedback_alinment"),
    ("unknown dataset", _set(f"experiments.{EXP}.dataset", "svhn"), f"experiments.{EXP}.dataset", "svhn"),
    ("negative learning rate", _set(f"experiments.{EXP}.train.lr", -0.1), f"experiments.{EXP}.train.lr", "-0.1"),
    ("unknown rule param", _set(f"experiments.{EXP}.methods.{FA}.params", {"feedback_scale": 0.3}),
     f"experiments.{EXP}.methods.{FA}.params", "feedback_scale"),
    ("reported method not a method", _set(f"experiments.{EXP}.reported.0.method", "dtp"),
     f"experiments.{EXP}.reported.0.method", "dtp"),
    ("input size mismatch", _set(f"experiments.{EXP}.net.sizes", [100, 1000, 10]),
     f"experiments.{EXP}.net.sizes", "784"),
    ("unknown scale", _set("scale", "huge"), "scale", "huge"),
    ("scale with zero epochs", _set(f"experiments.{EXP}.scales.smoke.epochs", 0),
     f"experiments.{EXP}.scales.smoke.epochs", "0"),
    ("misspelled scale key", _set(f"experiments.{EXP}.scales.smoke.epoch", 1), f"experiments.{EXP}.scales.smoke",
     "epoch"),
    ("misspelled top-level key", _set("resuts_dir", "out"), "<top level>", "resuts_dir"),
    ("train-eval subset on a synthetic task", _set("experiments.lillicrap_teacher.scales.quick.train_eval_subset", 100),
     "experiments.lillicrap_teacher.scales.quick.train_eval_subset", "synthetic"),
    ("train-eval subset of zero", _set(f"experiments.{EXP}.scales.quick.train_eval_subset", 0),
     f"experiments.{EXP}.scales.quick.train_eval_subset", "0"),
    ("early stopping without a validation set", _set(f"experiments.{EXP}.reported.0.at", "valid_best"),
     f"experiments.{EXP}.reported.0.at", "valid_size"),
    ("validation subset without a validation set", _set(f"experiments.{EXP}.scales.smoke.valid_subset", 100),
     f"experiments.{EXP}.scales.smoke.valid_subset", "valid_size"),
    ("unknown reading point", _set("experiments.lee_dtp_cifar10.reported.0.at", "best_test"),
     "experiments.lee_dtp_cifar10.reported.0.at", "best_test"),
    ("early rows sparser than their span", _set("experiments.lillicrap_linear.train.early_rows", {"until": 50, "every": 60}),
     "experiments.lillicrap_linear.train.early_rows", "every = 60"),
    ("early rows between minibatches", _set("experiments.lillicrap_linear.train.batch_size", 10),
     "experiments.lillicrap_linear.train.early_rows", "batch size (10)"),
    ("a how-soon claim read at the first row", _set("experiments.lillicrap_linear.claims.4.at", "first"),
     "experiments.lillicrap_linear.claims.4.reach", "at: first"),
    ("a claim about the start with lower methods", _set("experiments.lillicrap_linear.claims.3.lower", ["fa"]),
     "experiments.lillicrap_linear.claims.3", "above"),
]


@pytest.mark.parametrize(("mutate", "key_path", "word"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_config_is_rejected_with_one_line_naming_the_key(tmp_path: Path, mutate, key_path: str, word: str):
    cfg = raw_config()
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    assert msg.startswith(f"{path}: {key_path}:"), msg
    assert word in msg, msg
    with pytest.raises(ConfigError):  # the same check, as the Snakefile calls it on its merged config
        validate(cfg, "snakemake config")


def test_overrides_reach_into_lists_and_a_bad_path_is_one_line():
    cfg = load_config(REPO_CONFIG, {"experiments.lillicrap_linear.claims.2.below": 45})
    assert cfg["experiments"]["lillicrap_linear"]["claims"][2]["below"] == 45
    for key, words in (("experiments.lillicrap_linear.claims.30.below", "list of 7 (use 0..6)"),
                       ("experiments.lillicrap_linear.claims.x.below", "list of 7"),
                       ("experiments.lillicrap_linear.train.lr.x", "train.lr is a value (0.005)")):
        with pytest.raises(ConfigError) as err:
            load_config(REPO_CONFIG, {key: 1})
        assert str(err.value).startswith(f"--set {key}: ") and words in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_key_is_one_line_listing_the_keys_that_place_takes_and_names_its_set():
    for key, where, there in (("train.lr", "<top level>: 'train'", "scale, device, threads, ensembles"),
                              (f"experiments.{EXP}.scales.quick.epoch", f"experiments.{EXP}.scales.quick: 'epoch'",
                               "epochs, seeds, train_subset")):
        with pytest.raises(ConfigError) as err:
            load_config(REPO_CONFIG, {key: 1})
        msg = one_line(str(err.value))
        assert msg.startswith(f"--set {key}: {REPO_CONFIG}: {where}: no such key here; the keys this place "
                              f"takes: "), msg
        assert there in msg, msg
    # a key the schema takes but this config leaves out is accepted; an unknown key in the file itself is
    # reported against the file, not against an unrelated --set
    load_config(REPO_CONFIG, {f"experiments.{EXP}.methods.{BP}.train.lr": 0.1})
    cfg = raw_config()
    cfg["trian"] = {}
    bad = REPO_CONFIG.parent / "no-such-dir" / "x.yaml"
    with pytest.raises(ConfigError) as err:
        validate(cfg, str(bad))
    assert one_line(str(err.value)).startswith(f"{bad}: <top level>: 'trian': no such key here; the keys this "
                                               f"place takes: scale, device,"), str(err.value)


def test_overrides_are_validated_like_the_file():
    with pytest.raises(ConfigError, match=rf"experiments\.{EXP}\.train\.lr: -1 "):
        load_config(REPO_CONFIG, {f"experiments.{EXP}.train.lr": -1})
    cfg = load_config(REPO_CONFIG, {f"experiments.{EXP}.train.lr": 0.25, "scale": "smoke"})
    assert cfg["experiments"][EXP]["train"]["lr"] == 0.25 and cfg["scale"] == "smoke"


def test_missing_or_unparsable_config_file_is_one_line(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in one_line(str(err.value))
    broken = tmp_path / "broken.yaml"
    broken.write_text("scale: [smoke\nexperiments: {}\n")
    with pytest.raises(ConfigError) as err:
        load_config(broken)
    assert "broken.yaml" in one_line(str(err.value)) and "YAML" in str(err.value)


def test_cli_validate_accepts_the_repository_config(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["validate", "--config", str(REPO_CONFIG), "--scale", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "smoke" in out


def test_cli_set_reads_scientific_notation_as_a_number(capsys: pytest.CaptureFixture[str]):
    # PyYAML (YAML 1.1) reads "1e-3" as a string; on the command line it means the number
    assert cli.main(["validate", "--config", str(REPO_CONFIG), "--set", f"experiments.{EXP}.train.lr=1e-3"]) == 0
    assert cli.main(["validate", "--config", str(REPO_CONFIG), "--set", f"experiments.{EXP}.train.lr=-1e-3"]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"experiments.{EXP}.train.lr" in err


def test_cli_rejects_a_bad_config_file_with_exit_2_and_one_line(tmp_path: Path, cli_env: dict[str, str]):
    cfg = raw_config()
    cfg["experiments"][EXP]["train"]["batch_size"] = "ten"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = run_cli("validate", "--config", str(bad), env=cli_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert str(bad) in line and f"experiments.{EXP}.train.batch_size" in line
    assert "Traceback" not in proc.stderr


def test_cli_set_override_with_a_bad_value_is_rejected_before_training(tmp_path: Path, cli_env: dict[str, str]):
    results = tmp_path / "results"
    proc = run_cli("train", "--config", str(REPO_CONFIG), "--set", f"results_dir={results}",
                   "--set", f"data.dir={tmp_path / 'data'}", "--set", f"experiments.{EXP}.train.lerning_rate=0.1",
                   "--experiment", EXP, "--method", BP, "--seed", "0", env=cli_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert "lerning_rate" in line and f"experiments.{EXP}.train" in line
    assert not results.exists(), "a run folder was created for an invalid config"
    assert not (tmp_path / "data").exists()


def test_method_train_settings_override_the_experiment_and_the_defaults_fill_in():
    cfg = load_config(REPO_CONFIG)
    exp_train = cfg["experiments"][EXP]["train"]
    cfg["experiments"][EXP]["methods"][FA]["train"] = {"lr": exp_train["lr"] * 7, "momentum": 0.5}
    fa, bp = resolve_run(cfg, EXP, FA, 0), resolve_run(cfg, EXP, BP, 0)
    assert fa["train"]["lr"] == exp_train["lr"] * 7 and fa["train"]["momentum"] == 0.5
    assert bp["train"]["lr"] == exp_train["lr"]
    for key, value in exp_train.items():  # everything else is inherited from the experiment
        if key not in ("lr", "momentum"):
            assert fa["train"][key] == value == bp["train"][key], key
    from biocredit.config import TRAIN_DEFAULTS

    for key, value in TRAIN_DEFAULTS.items():  # and from the defaults where the experiment is silent
        if key not in exp_train and key != "momentum":
            assert fa["train"][key] == value, key


def test_resolve_run_names_an_unknown_experiment_or_method():
    cfg = load_config(REPO_CONFIG)
    with pytest.raises(ConfigError, match="nope") as err:
        resolve_run(cfg, "nope", BP, 0)
    assert EXP in one_line(str(err.value))
    with pytest.raises(ConfigError, match="dtp") as err:
        resolve_run(cfg, EXP, "dtp", 0)
    assert BP in one_line(str(err.value))


def test_config_hash_follows_the_run_settings_and_nothing_else():
    cfg = load_config(REPO_CONFIG)
    base = {m: config_hash(resolve_run(cfg, EXP, m, 0)) for m in cfg["experiments"][EXP]["methods"]}
    assert len(set(base.values())) == len(base), "two methods share a config hash"
    assert config_hash(resolve_run(cfg, EXP, FA, 0)) == base[FA], "the hash is not deterministic"
    assert config_hash(resolve_run(cfg, EXP, FA, 1)) != base[FA], "the seed is not part of the hash"

    changed = copy.deepcopy(cfg)
    changed["experiments"][EXP]["methods"][FA]["train"] = {"lr": cfg["experiments"][EXP]["train"]["lr"] * 2}
    assert config_hash(resolve_run(changed, EXP, FA, 0)) != base[FA]
    assert config_hash(resolve_run(changed, EXP, BP, 0)) == base[BP], "BP's hash moved with FA's learning rate"

    more_epochs = copy.deepcopy(cfg)
    more_epochs["experiments"][EXP]["scales"][cfg["scale"]]["epochs"] += 1
    assert config_hash(resolve_run(more_epochs, EXP, BP, 0)) != base[BP]

    unrelated = copy.deepcopy(cfg)
    other = copy.deepcopy(cfg["experiments"][EXP])
    other["train"]["lr"] = 0.5
    unrelated["experiments"]["another_experiment"] = other
    unrelated["experiments"][EXP]["title"] = cfg["experiments"][EXP]["title"]
    unrelated["wandb"] = {**cfg.get("wandb", {}), "project": "somewhere-else"}
    validate(unrelated)
    assert {m: config_hash(resolve_run(unrelated, EXP, m, 0)) for m in base} == base


def test_rule_checks_can_be_skipped_and_then_torch_is_never_imported(tmp_path: Path):
    """The stages that only read finished runs (aggregate, figures, compare) validate without the rule
    registry, so they do not pay torch's import; the full check still names a bad rule."""
    import subprocess
    import sys

    cfg = raw_config()
    cfg["experiments"][EXP]["methods"][FA]["rule"] = "no_such_rule"
    bad = tmp_path / "bad_rule.yaml"
    bad.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(ConfigError, match=f"experiments.{EXP}.methods.{FA}.rule: unknown learning rule"):
        load_config(bad)
    code = (
        "import sys\n"
        "from biocredit import aggregate, cli, figures\n"
        "from biocredit.config import load_config\n"
        f"load_config({str(REPO_CONFIG)!r}, rules=False)\n"
        f"load_config({str(bad)!r}, rules=False)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
