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
                "--num-parts", "-np", "--overwrite", "--profile", "--device"],
    "evaluate": ["--pred", "--ref", "--dataset-json", "-o", "-np", "--default-tolerance", "--tolerances",
                 "--compare"],
    "profile": ["-o", "--interval", "--gpu-allowance-mb"],
    "phantoms": ["--labeled", "--unlabeled", "--test", "--seed", "--size", "--dataset-id"],
    "demo": ["--workdir", "--minutes", "--device"],
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
