"""`cps3d --help` and every subcommand's --help document the options the issues name."""

import pytest

from cps3d.cli import build_parser, main

DOCUMENTED = {
    "check": ["-d", "--raw-root", "--preprocessed-root", "-np", "--no-unlabeled", "--no-test", "--no-progress"],
    "plan": ["-d", "--intensity-stats", "--planner", "--patch-size", "--n-stages", "--base-features",
             "--max-features", "--batch-size", "--unlabeled-batch-size", "--gpu-memory-gb", "--memory-factor",
             "--skip-check", "-c"],
    "preprocess": ["-d", "-c", "-np", "--skip-check", "--no-unlabeled"],
    "train": ["-d", "-c", "-f", "--mode", "--epochs", "--iters-per-epoch", "--val-iters", "--lambda-max",
              "--lambda-ramp-epochs", "--lambda-start-epoch", "--lr-schedule", "--device", "--continue", "--num-gpus", "--results-root"],
    "predict": ["-i", "-o", "-m", "-f", "--branch", "--step-size", "--tta", "--no-tta", "--forced-spacing",
                "--protocol", "--postprocess", "--no-postprocess", "--save-probabilities", "--part-id",
                "--num-parts", "-np", "--overwrite", "--profile", "--device", "--resampling"],
    "export": ["-m", "-o", "--branch", "-f", "--checkpoint", "--overwrite"],
    "evaluate": ["--pred", "--ref", "--dataset-json", "-o", "-np", "--default-tolerance", "--tolerances",
                 "--compare"],
    "profile": ["-o", "--interval", "--gpu-allowance-mb"],
    "phantoms": ["--labeled", "--unlabeled", "--test", "--seed", "--size", "--dataset-id"],
    "demo": ["--workdir", "--minutes", "--device"],
    "compare": ["-d", "-c", "-o", "--labeled", "--seeds", "--methods", "--epochs", "--iters-per-epoch",
                "--max-minutes", "--holdout", "--split", "--device", "--jobs"],
}


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in DOCUMENTED:
        assert command in out


@pytest.mark.parametrize("command", sorted(DOCUMENTED))
def test_subcommand_help_documents_its_options(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in DOCUMENTED[command]:
        assert f"{option} " in out or f"{option}," in out or f"{option}\n" in out or f"{option}]" in out, option
    # every option has a help text
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: cps3d" in capsys.readouterr().out


def usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_mistyped_command_gets_a_suggestion(capsys):
    err = usage_error(["trian", "-d", "1"], capsys)
    assert "invalid choice: 'trian'" in err and "(did you mean 'train'?)" in err


@pytest.mark.parametrize("argv, usage, hint", [
    (["train", "-d", "1", "--contine"], "usage: cps3d train", "unrecognized arguments: --contine (did you mean "
                                                              "--continue?)"),
    (["predict", "-i", "a", "-o", "b", "-m", "c", "--brnach", "2"], "usage: cps3d predict",
     "unrecognized arguments: --brnach 2 (did you mean --branch?)"),
    (["plan", "-d", "1", "--patchsize", "16", "32", "32"], "usage: cps3d plan",
     "unrecognized arguments: --patchsize 16 32 32 (did you mean --patch-size?)"),
    (["predict", "-i", "a", "-o", "b", "-m", "c", "--branch", "ensembel"], "usage: cps3d predict",
     "invalid choice: 'ensembel' (choose from '1', '2', 'ensemble') (did you mean 'ensemble'?)"),
])
def test_mistyped_option_is_reported_by_its_command(argv, usage, hint, capsys):
    err = usage_error(argv, capsys)
    assert usage in err and hint in err


def test_abbreviated_options_are_refused(monkeypatch, tmp_path, capsys):
    def must_not_run(config):
        raise AssertionError(f"the demo started with {config}")

    monkeypatch.setattr("cps3d.demo.run_demo", must_not_run)
    err = usage_error(["demo", "--minute", "3", "--workdir", str(tmp_path)], capsys)  # was --minutes 3... or 15
    assert "unrecognized arguments: --minute 3 (did you mean --minutes?)" in err
    err = usage_error(["check", "-d", "1", "--raw-r", str(tmp_path)], capsys)
    assert "unrecognized arguments: --raw-r" in err and "--raw-root" in err
    err = usage_error(["--verb", "check", "-d", "1"], capsys)
    assert "unrecognized arguments: --verb (did you mean --verbose?)" in err


def test_commands_are_listed_in_pipeline_order(capsys):
    from cps3d.cli import COMMANDS

    names = [m.COMMAND for m in COMMANDS]
    assert sorted(names) == sorted(DOCUMENTED)
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert sorted(names, key=lambda n: out.index(f"    {n} ")) == names  # --help lists them in COMMANDS' order


def test_help_shows_the_configuration_classes_defaults(capsys):
    """Options default to None ("not given"); the value the help text names is the dataclass's."""
    from cps3d.fingerprint import FingerprintConfig
    from cps3d.planning import DEFAULT_PLANS_NAME, PlanConfig
    from cps3d.training.config import TrainConfig

    def help_text(command):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())  # argparse wraps lines

    train, plan = help_text("train"), help_text("plan")
    t = TrainConfig()
    for text in (f"--epochs EPOCHS default: {t.epochs}", f"(default: {t.iters_per_epoch})",
                 f"(default: {t.lr_schedule})", f"(default: {t.momentum}, nnU-Net's", f"(default: {t.seed})",
                 f"(default: {DEFAULT_PLANS_NAME})"):
        assert text in train, text
    f, p = FingerprintConfig(), PlanConfig()
    for text in (f"(default: {f.intensity_stats})", f"(default: {f.samples_total})", f"(default: {f.seed})",
                 f"(default: {p.planner})", "(default: 2d 3d_fullres)"):
        assert text in plan, text
    args = build_parser().parse_args(["train", "-d", "1"])
    assert args.epochs is None and args.mode is None and args.lr_schedule is None  # "not given"


def test_predict_options_default_to_predict_configs(capsys):
    """cps3d predict: options not given are None, the help names PredictConfig's defaults, the config is
    PredictConfig's but for what the command line (or a protocol) gives."""
    from cps3d.cli.predict import config_from_args
    from cps3d.inference.config import PROTOCOLS, PredictConfig

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    d = PredictConfig()
    for part in (f"(default {d.step_size:g})", f"(default: {d.checkpoint})", f"(default {d.resampling})",
                 "test-time mirroring (default off)", f"(default: {d.ensemble_average})"):
        assert part in text, part
    required = ["predict", "-i", "in", "-o", "out", "-m", "model"]
    args = build_parser().parse_args(required)
    assert args.step_size is None and args.branch is None and args.postprocess is None and args.overwrite is None
    assert config_from_args(args) == PredictConfig(num_processes=args.num_processes)
    given = config_from_args(build_parser().parse_args(
        required + ["--protocol", "nnunet", "--step-size", "0.6", "--no-postprocess", "--branch", "2"]))
    assert (given.step_size, given.use_mirroring, given.postprocess, given.branch, given.resampling) == (
        0.6, PROTOCOLS["nnunet"]["use_mirroring"], False, "2", "exact")
    torch_path = config_from_args(build_parser().parse_args(required + ["--protocol", "nnunet", "--resampling", "torch"]))
    assert torch_path.resampling == "torch"
    paper = config_from_args(build_parser().parse_args(required + ["--protocol", "paper"]))
    assert paper.forced_spacing == PROTOCOLS["paper"]["forced_spacing"] is not None
    off = config_from_args(build_parser().parse_args(required + ["--protocol", "paper", "--forced-spacing", "off"]))
    assert off.forced_spacing is None


def test_building_the_parser_imports_neither_torch_nor_the_predictor():
    """Every command line builds every subcommand's parser: reading PredictConfig's defaults for the help must not
    load torch and nnU-Net's predictor (seconds)."""
    import subprocess
    import sys

    code = ("import sys; import cps3d.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'cps3d.inference.predictor') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_choice_error_names_the_option_and_the_closest_value():
    from cps3d.options import check_choice
    from cps3d.training.config import TrainConfig

    assert check_choice("mode", "cps", ("cps", "supervised")) == "cps"
    with pytest.raises(ValueError, match=r"^mode='supervsed': choose one of cps, supervised \(did you mean "
                                         r"'supervised'\?\)$"):
        TrainConfig(mode="supervsed")
    with pytest.raises(ValueError, match=r"^lr_schedule='cosine': choose one of plateau, poly$"):  # none close
        TrainConfig(lr_schedule="cosine")


def test_library_errors_are_usage_errors_with_the_message(tmp_path, capsys):
    """main() turns the library's ValueError/FileNotFoundError into 'cps3d CMD: error: ...' and status 2."""
    assert main(["evaluate", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cps3d evaluate: error: ") and "a.json" in err and "Traceback" not in err


def test_predict_resampling_help_and_choices_are_fast_pys(tmp_path, capsys):
    """--resampling has no argparse choices (they would import torch for every --help): its help names every mode of
    cps3d.inference.fast.RESAMPLINGS and a bad value is refused by PredictConfig's check, as a usage error with the
    modes, before anything is read."""
    from cps3d.inference.fast import RESAMPLINGS

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"--resampling {'|'.join(RESAMPLINGS)}" in out
    for mode in RESAMPLINGS:
        assert f"{mode}:" in out or f"{mode} (default):" in out, mode
    code = main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "-m", str(tmp_path), "--resampling",
                 "torch_export", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"resampling='torch_export': choose one of {', '.join(RESAMPLINGS)} (did you mean 'torch-export'?)" in err
    assert not (tmp_path / "out").exists()
