"""The `distinception` command: parse arguments, then call one library function.

Each group of commands (`jobs`: train and friends, `data`, `cluster`, `bench`) adds its own
parsers and holds its own command functions; this module assembles them and runs one.

A user mistake (bad config value, missing path, malformed data) ends with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other user error: one line, exit status 2 (argparse
    prints the whole usage first). Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"distinception: error: {message} (see {self.prog} --help)\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix, reported in one line. A data set's errors
    (`DataError`) are `ConfigError`s: naming them here would import the data room, and torch
    with it, on every mistaken command line."""
    from distinception.config import ConfigError

    return (ConfigError, FileNotFoundError)


#: One or two examples at the end of each command's --help.
EXAMPLES: dict[str, list[str]] = {
    "train": [
        "distinception train --recipe demo",
        "distinception train --recipe digits --set data.path=~/.cache/distinception/digits "
        "--set ps.num_replicas=4",
    ],
    "sweep": [
        "distinception sweep --recipe demo --samples 8 --scheduler asha",
        "distinception sweep --space optim.lr=grid:0.01,0.02,0.05 --samples 1 --set run.epochs=5",
    ],
    "ensemble": [
        "distinception ensemble --members 7 --augments paper,caffe",
        "distinception ensemble --members 3 --augments best-of-sweep --sweep sweeps/demo-TIME",
    ],
    "evaluate": [
        "distinception evaluate RUN_ID --crops center,ten,paper144",
        "distinception evaluate models:/googlenet/1 --crops ten --limit 500 --json",
    ],
    "model summary": [
        "distinception model summary",
        "distinception model summary --variant bn --input-size 64 --width 0.25 --json",
    ],
    "data generate": ["distinception data generate --out data/builtin --size 64"],
    "data import": [
        "distinception data import ~/images/flowers --out data/flowers",
        "distinception data import s3://my-bucket/raw --out s3://my-bucket/sets/raw "
        "--engine ray --address auto",
    ],
    "data inspect": ["distinception data inspect data/flowers --grid flowers.png"],
    "submit": [
        "distinception submit jobs/train.yaml --follow",
        "distinception submit jobs/train.yaml --address http://127.0.0.1:8265 -- "
        "--set ps.num_replicas=8",
    ],
    "jobs list": ["distinception jobs list --address http://127.0.0.1:8265"],
    "jobs status": ["distinception jobs status train-demo-1a2b3c"],
    "jobs logs": ["distinception jobs logs train-demo-1a2b3c --follow"],
    "jobs stop": ["distinception jobs stop train-demo-1a2b3c"],
    "bench throughput": ["distinception bench throughput --replicas 2 --quick"],
    "bench convergence": [
        "distinception bench convergence --quick",
        "distinception bench convergence --recipe digits --replicas 2 --seeds 5 "
        "--lrs 0.02,0.05 --set data.path=~/.cache/distinception/digits",
    ],
    "bench staleness": ["distinception bench staleness --quick"],
    "bench updates": [
        "distinception bench updates --quick",
        "distinception bench updates --recipe digits --replicas 1,2 --updates previous,default,dc "
        "--seeds 3 --set data.path=~/.cache/distinception/digits",
    ],
    "bench nodes": [
        "distinception bench nodes --quick",
        "distinception bench nodes --replicas 1,2,4,8 --seconds 40",
    ],
    "bench gpu": ["distinception bench gpu --batch 64 --steps 60"],
    "plan": [
        "distinception plan --cluster cluster/aws.yaml --link-gbps 10,25",
        "distinception plan --calibrate --recipe demo --replicas 2,4,8 --save-profile demo.yaml",
    ],
}


def leaf_parsers(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable command's parser, with its words (`bench updates`)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(words), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, (*words, name))


def _add_examples(parser: argparse.ArgumentParser) -> None:
    for words, p in leaf_parsers(parser):
        lines = EXAMPLES.get(words, [])
        if lines:
            p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)
            p.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distinception",
        description="GoogLeNet trained with asynchronous SGD on a Ray parameter server, "
        "Polyak-averaged, every run in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from distinception.cli import bench, cluster, data, jobs, plan

    for group in (jobs, data, cluster, bench, plan):
        group.add_parsers(sub)
    _add_examples(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if argv[:1] == ["submit"] and "--" in argv:
        # argparse cannot take positionals after options; everything past -- goes to the job.
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if extra:
        args.extra = [*args.extra, *extra]
    try:
        with warnings.catch_warnings():
            _renamed_keys_as_notices()
            status = int(args.func(args) or 0)
        # Printed output is buffered: a reader that has gone (`| head`) shows here, not at exit.
        sys.stdout.flush()
        return status
    except _user_errors() as err:
        print(f"distinception: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distinception: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, BrokenPipeError) and _stdout_reader_gone():
            # The reader took what it wanted, as `head` does: end quietly, with the status a
            # shell gives a command that SIGPIPE ended, and keep Python's exit flush off the pipe.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        # Not the user's mistake: one line and where the whole traceback went, status 1.
        log = _crash_log(argv)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(
            f"distinception: unexpected {type(err).__name__}: {first} (traceback in {log})",
            file=sys.stderr,
        )
        return 1


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end was closed: only then is a broken
    pipe the user's `| head` and not a failed connection of ours."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLERR)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _renamed_keys_as_notices() -> None:
    """Show each renamed config key a user typed as one line on stderr. Python hides a
    DeprecationWarning raised outside `__main__`, so from a command it would never be seen."""

    def one_line(message: Warning | str, *_: object, **__: object) -> None:
        print(f"distinception: warning: {message}", file=sys.stderr)

    from distinception.config import RenamedKeyWarning

    warnings.filterwarnings("default", category=RenamedKeyWarning)
    warnings.showwarning = one_line


def _crash_log(argv: list[str]) -> str:
    """Write the current exception's traceback to a file under the cache directory."""
    import tempfile
    import time
    import traceback
    from pathlib import Path

    text = f"distinception {' '.join(argv)}\n\n{traceback.format_exc()}"
    folder = Path(os.environ.get("DISTINCEPTION_LOG_DIR", "~/.cache/distinception/logs"))
    try:
        folder = folder.expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(text)
    except OSError:
        fd, name = tempfile.mkstemp(prefix="distinception-crash-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        path = Path(name)
    return str(path)
