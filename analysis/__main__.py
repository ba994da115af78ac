"""`python -m analysis export|evaluate|plot|report|all EXPERIMENT_DIR`: the analysis from the shell;
`python -m analysis compare DIR_A DIR_B [...]`: several experiments' shared hypotheses side by side;
`python -m analysis wandb EXPERIMENT_DIR`: its answers (tables, figures, REPORT.md) to a W&B analysis run.

A directory that is missing or holds no trials gives one line on stderr and exit status 2, and nothing is
written. A full disk gives one `error: disk full:` line naming the filesystem, and the command that redoes the
analysis, with exit status 1; the trials and every file written before are kept whole.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from analysis.compare import compare
from analysis.evaluation import DEFAULT, EVALUATION_FILE, evaluate_experiment
from analysis.experiment import AnalysisError, space_record
from analysis.pipeline import FORMATS, export_frames, no_space, run_all
from analysis.plots import plot_experiment
from analysis.report import report_experiment
from analysis.wandb_results import log_results, recorded_settings
from trainers.cli import OneLineArgumentParser, one_line_warnings
from trainers.records import LOOPS_FACTOR, Evaluation
from trainers.schema import ConfigError, coerce_value
from trainers.wandb_log import WANDB_MODES


def parser() -> OneLineArgumentParser:
    cli = OneLineArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    commands = cli.add_subparsers(dest="command", required=True)
    helps = {"export": "write the curves and summary frames", "evaluate": "evaluate the checkpoints",
             "plot": "draw the figures", "report": "write REPORT.md", "all": "all of them, in that order (results.parquet after the evaluation)"}
    for name, help_text in helps.items():
        command = commands.add_parser(name, help=help_text)
        command.add_argument("experiment_dir", help="the experiment directory (Ray Tune's layout)")
        command.add_argument("--out", help="write here instead of into the experiment directory")
        if name in ("export", "all"):
            command.add_argument("--format", choices=FORMATS, default="parquet", help="of the frames")
        if name in ("evaluate", "all"):
            # unset: the space's `evaluation:`, as the experiment's record keeps it
            command.add_argument("--n-prompts", type=_evaluation("n_prompts"),
                                 help=f"fresh prompts per trial (default: the space's, else {DEFAULT.n_prompts})")
            command.add_argument("--max-loops", type=_evaluation("max_loops"),
                                 help=f"loops to run looped models to (default: the space's, else {LOOPS_FACTOR} b)")
            command.add_argument("--seed", type=_evaluation("seed"),
                                 help=f"seed of the prompts (default: the space's, else {DEFAULT.seed})")
            command.add_argument("--device", help="torch device (default: cuda when present)")
    command = commands.add_parser("compare", help="several experiments' shared hypotheses side by side")
    command.add_argument("experiment_dirs", nargs="+", metavar="experiment_dir", help="two experiment directories "
                                                                                    "or more")
    command.add_argument("--out", default="comparison", help="write here (default: ./%(default)s)")
    command = commands.add_parser("wandb", help="log the answers of an analysed experiment to a W&B analysis run")
    command.add_argument("experiment_dir", help="the experiment directory, after `all`")
    command.add_argument("--mode", choices=WANDB_MODES, help="default: the space's, else online when wandb has a key")
    return cli


def _evaluation(key: str):
    """An argparse type for the flag of the space's `evaluation.<key>`, checked by the same schema."""
    def parse(text: str) -> int:
        try:
            return coerce_value(Evaluation, key, int(text) if text.lstrip("-").isdigit() else text, key)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{key}: ")) from None
    return parse


def run(args) -> list:
    if args.command == "wandb":
        offline = log_results(args.experiment_dir, recorded_settings(space_record(args.experiment_dir), args.mode))
        return [offline] if offline else []
    if args.command == "compare":
        written = compare(args.experiment_dirs, args.out)
        return [written["comparison"], written["report"], *written["plots"]]
    directory, out = args.experiment_dir, args.out
    if args.command == "export":
        return list(export_frames(directory, out, args.format).values())
    if args.command == "evaluate":
        evaluate_experiment(directory, n_prompts=args.n_prompts, max_loops=args.max_loops, seed=args.seed,
                            device=args.device, out=out)
        return [Path(out if out is not None else directory) / EVALUATION_FILE]
    if args.command == "plot":
        return plot_experiment(directory, out)
    if args.command == "report":
        return [report_experiment(directory, out)]
    written = run_all(directory, out, fmt=args.format, n_prompts=args.n_prompts, max_loops=args.max_loops,
                      seed=args.seed, device=args.device)
    return [path for value in written.values() for path in (value if isinstance(value, list) else [value])]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    with one_line_warnings():
        try:
            written = run(args)
        except AnalysisError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:
            told = no_space(err, _output_folder(args), "the output folder")
            if told is None:
                raise
            print(f"error: disk full: {told}; the trials and the files written before are kept; free some space, "
                  "then redo the analysis with the command below\nredo it with:\n  "
                  f"{shlex.join([sys.executable, '-m', 'analysis', *argv])}", file=sys.stderr)
            return 1
    for path in written:
        print(path)
    return 0


def _output_folder(args) -> str:
    if getattr(args, "out", None) is not None:
        return args.out
    return args.experiment_dir


if __name__ == "__main__":
    sys.exit(main())
