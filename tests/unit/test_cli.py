import os
import signal
import subprocess
import sys

import pytest
from as_typed import EXE, distinception

from distinception.cli import build_parser, main

SUBCOMMANDS = [
    ["train"],
    ["model", "summary"],
    ["data", "generate"],
    ["data", "import"],
    ["data", "inspect"],
]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "model", "data"):
        assert cmd in out


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_each_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    assert "usage: distinception " + " ".join(words) in capsys.readouterr().out


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "distinception.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "train" in proc.stdout


def test_bad_override_is_one_line_and_exit_2(capsys):
    assert main(["train", "--set", "ps.num_replicas=0", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "distinception: error: ps.num_replicas=0: expected an integer >= 1"


@pytest.mark.parametrize(
    ("argv", "message", "prog"),
    [
        (["trian"], "argument COMMAND: invalid choice: 'trian'", "distinception"),
        (["train", "--rcipe", "tiny"], "unrecognized arguments: --rcipe tiny", "distinception"),
        (
            ["data", "generate", "--size", "big"],
            "argument --size: invalid int value: 'big'",
            "distinception data generate",
        ),
        (["data", "import"], "the following arguments are required:", "distinception data import"),
    ],
)
def test_a_usage_mistake_is_one_line_and_exit_2(argv, message, prog, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    # One line, not argparse's usage block above it, saying where the help is.
    assert err.count("\n") == 1 and err.startswith("distinception: error: "), err
    assert message in err and err.endswith(f" (see {prog} --help)\n"), err


def test_unknown_recipe_and_missing_config(capsys, tmp_path):
    assert main(["train", "--recipe", "nope"]) == 2
    assert "--recipe='nope': expected one of demo, paper" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "x.yaml")]) == 2
    assert "expected an existing YAML file" in capsys.readouterr().err


def test_print_config_shows_the_resolved_recipe(capsys):
    assert main(["train", "--recipe", "paper", "--set", "ps.num_replicas=3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "num_replicas: 3" in out and "variant: faithful" in out


def test_a_renamed_key_typed_on_the_command_line_works_and_says_its_new_name():
    proc = distinception("train", "--recipe", "tiny", "--set", "ps.lr=0.03", "--print-config")
    assert proc.stderr == (
        "distinception: warning: ps.lr is deprecated: it is now optim.lr; the old key still works\n"
    )
    optim = proc.stdout.split("optim:\n")[1]
    assert optim.splitlines()[1] == "  lr: 0.03"  # after `optimizer: sgd`
    proc = distinception("train", "--recipe", "tiny", "--set", "optim.lr=0.03", "--print-config")
    assert proc.stderr == ""


#: Mistaken command lines of every command that would load torch, Ray or MLflow for its job,
#: and what each is told.
REFUSED = {
    ("train", "--set", "ps.num_replicas=0"): "ps.num_replicas=0: expected an integer >= 1",
    ("plan", "--target", "1.5"): "--target=1.5: expected a share in (0, 1]",
    ("sweep", "--recipe", "tiny", "--space", "optim.lr=0.1"): "--space optim.lr='0.1': expected",
    ("evaluate", "abc", "--crops", "center,five"): "--crops item 'five': expected one of center",
    ("bench", "updates", "--updates", "fast"): "--updates='fast': expected a comma list of",
    ("bench", "nodes", "--replicas", "0"): "--replicas='0': expected a comma list of integers",
    ("bench", "convergence", "--systems", "ps,dp"): "--systems='ps,dp': expected a comma list",
    ("bench", "staleness", "--policies", "bound:x"): "--policies: staleness='bound:x': expected",
    ("model", "summary", "--arch", "nope"): "arch='nope': expected googlenet, torchvision:NAME",
}


def test_a_printed_or_refused_config_answers_without_loading_torch_ray_or_mlflow():
    """Those load with a job, not for a command line that only builds a config or is wrong:
    loading them took 3-7 s of every such answer."""
    code = (
        "import sys\n"
        "from distinception.cli import main\n"
        "assert main(['train', '--recipe', 'tiny', '--print-config']) == 0\n"
        f"for argv in {sorted(REFUSED)!r}:\n"
        "    assert main(list(argv)) == 2, argv\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout[-500:]
    errors = proc.stderr.splitlines()
    assert len(errors) == len(REFUSED), proc.stderr  # one line each
    for message in REFUSED.values():
        assert any(message in line for line in errors), message


def test_parser_defaults_to_demo():
    assert build_parser().parse_args(["train"]).recipe == "demo"


def test_bench_updates_help_names_every_update(capsys):
    from distinception.bench.choices import UPDATES

    with pytest.raises(SystemExit):
        main(["bench", "updates", "--help"])
    out = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at "-"
    for name in UPDATES:
        assert name in out, name
    assert "examples: distinception bench updates" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "1,x"], "--replicas='1,x': expected a comma list of integers >= 1"),
        (["--replicas", "0"], "--replicas='0': expected a comma list of integers >= 1"),
        (["--seeds", "0"], "--seeds=0: expected an integer >= 1"),
        (["--updates", "default,fast"], "--updates='default,fast': expected a comma list of"),
    ],
)
def test_bench_updates_bad_arguments_are_one_line(argv, message, capsys):
    assert main(["bench", "updates", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distinception: error: " + message) and "\n" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "0,2"], "--replicas='0,2': expected a comma list of integers >= 1"),
        (["--seconds", "0"], "--seconds=0.0: expected a number > 0"),
        (["--recipe", "huge"], "--recipe='huge': expected one of"),
    ],
)
def test_bench_nodes_bad_arguments_are_one_line_before_any_cluster(argv, message, capsys):
    import distinception.bench.nodes as nodes

    def never(*_: object, **__: object) -> None:
        raise AssertionError("a cluster was started")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nodes, "fake_cluster", never)
        assert main(["bench", "nodes", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distinception: error: " + message) and "\n" not in err


def test_bench_convergence_bad_systems_and_target_are_one_line(capsys):
    assert main(["bench", "convergence", "--target", "1.5"]) == 2
    assert "--target=1.5: expected an error rate in (0, 1)" in capsys.readouterr().err
    assert main(["bench", "convergence", "--systems", "ps,mpi", "--quick"]) == 2
    assert "--systems='ps,mpi': expected a comma list of ps, ps-previous" in (
        capsys.readouterr().err
    )
    assert main(["bench", "convergence", "--straggler", "0.5"]) == 2
    assert "--straggler=0.5: expected a number in [1, 100]" in capsys.readouterr().err


def test_the_straggler_is_a_benchmark_option_not_part_of_a_jobs_config(capsys):
    from distinception import api
    from distinception.config import ConfigError

    with pytest.raises(ConfigError, match=r"straggler=0.5: expected a number in \[1, 100\]"):
        api.train(api.load_config("tiny"), track=False, straggler=0.5)  # before Ray starts
    assert main(["train", "--set", "ps.straggler_factor=2", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distinception: error: ps.straggler_factor: unknown key") and (
        "\n" not in err
    )


def test_data_inspect_runs_as_a_user_types_it(tmp_path):
    from distinception.data.generated import generate_dataset

    data = tmp_path / "set"
    generate_dataset(str(data), classes=2, per_class=4, val_per_class=2, size=16, seed=0)
    grid = tmp_path / "grid.png"
    proc = distinception("data", "inspect", str(data), "--grid", str(grid), timeout=120)
    assert "train" in proc.stdout and grid.is_file()


def test_every_command_ends_its_help_with_examples_that_parse(capsys):
    import shlex

    from distinception.cli import EXAMPLES, build_parser, leaf_parsers

    commands = dict(leaf_parsers(build_parser()))
    assert set(commands) == set(EXAMPLES), set(commands) ^ set(EXAMPLES)
    for words, lines in EXAMPLES.items():
        assert 1 <= len(lines) <= 2, words
        for line in lines:
            argv = shlex.split(line)
            assert argv[: 1 + len(words.split())] == ["distinception", *words.split()], line
            if "--" in argv:
                argv = argv[: argv.index("--")]
            build_parser().parse_args(argv[1:])  # exits 2 on an option that does not exist
        with pytest.raises(SystemExit):
            main([*words.split(), "--help"])
        assert capsys.readouterr().out.rstrip().endswith(lines[-1])


def test_an_unexpected_error_is_one_line_with_the_log_and_exit_1(monkeypatch, tmp_path, capsys):
    import distinception.cli.data as cli

    def broken(args):
        raise RuntimeError("the model exploded\nsecond line")

    monkeypatch.setattr(cli, "cmd_model_summary", broken)
    monkeypatch.setenv("DISTINCEPTION_LOG_DIR", str(tmp_path))
    assert main(["model", "summary"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("distinception: unexpected RuntimeError:"), err
    (log,) = tmp_path.glob("crash-*.log")
    assert f"(traceback in {log})" in err
    assert "Traceback" in log.read_text() and "second line" in log.read_text()


def test_output_read_by_a_reader_that_stops_early_ends_quietly(tmp_path):
    """`distinception ... | head`: the reader closes the pipe before the command prints."""
    proc = subprocess.Popen(
        [EXE, "model", "summary"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, DISTINCEPTION_LOG_DIR=str(tmp_path)),
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, err
    assert err == "" and not list(tmp_path.iterdir())  # no message, no crash log


def test_a_broken_pipe_that_is_not_the_output_s_is_still_an_error(monkeypatch, tmp_path, capsys):
    import distinception.cli.data as cli

    def lost_connection(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_model_summary", lost_connection)
    monkeypatch.setenv("DISTINCEPTION_LOG_DIR", str(tmp_path))
    assert main(["model", "summary"]) == 1
    assert capsys.readouterr().err.startswith("distinception: unexpected BrokenPipeError:")
