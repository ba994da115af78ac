"""docs/CONFIG.md's "Runner flags" tables against the parsers of the three command lines.

Every flag of `python -m tune_looped.run`, of each `python -m analysis` command and of `python -m trainers.train`
must be in its table with the parser's value (a switch, the choices, an integer or a number) and default, and the
tables must name no flag a parser lacks. The tables are written by hand; this keeps them true.
"""
import argparse
import re
from pathlib import Path

import pytest

from analysis.__main__ import parser as analysis_parser
from trainers.train import parse_args as train_args
from tune_looped.run import parse_args as run_args

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md"
RUN, ANALYSIS, TRAIN = "python -m tune_looped.run", "python -m analysis", "python -m trainers.train"
NONE = "-"  # the value cell of a switch, and the default cell of a flag without a default
REQUIRED = "required"
TYPE_WORDS = {int: "integer", float: "number"}


class _Built(Exception):
    pass


def built_parser(parse_args) -> argparse.ArgumentParser:
    """The parser an entry module's `parse_args` builds inside itself, caught as it starts to parse."""
    def catch(parser, *_, **__):
        raise _Built(parser)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Built) as built:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
        parse_args([])
    return built.value.args[0]


def parser_flags(parser: argparse.ArgumentParser, command: str = "") -> dict[tuple[str, str], argparse.Action]:
    """(command, flag) -> its action: a sub-command's flags under its name, the parser's own under ''. A flag
    with aliases is named by all of them, in the parser's order."""
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags |= parser_flags(sub, name)
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            flags[(command, ", ".join(action.option_strings))] = action
    return flags


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _quoted(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def doc_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The tables of the Runner flags section by command line (the `### `python -m ...`` heading above each), each
    row as column -> cell."""
    assert "\n## Runner flags\n" in text, "docs/CONFIG.md has no section '## Runner flags'"
    section = text.split("\n## Runner flags\n", 1)[1].split("\n## ", 1)[0]
    tables = {}
    for part in section.split("\n### ")[1:]:
        heading, _, body = part.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        header = _cells(lines[0])
        tables[heading.strip().strip("`")] = [dict(zip(header, _cells(line))) for line in lines[2:]]
    return tables


def _name(key: tuple[str, str]) -> str:
    return " ".join(part for part in key if part)


def _expected_default(action: argparse.Action) -> str:
    if action.required:
        return REQUIRED
    # identity, not equality: a default of 0 is a default, though 0 == False
    if action.default is None or action.default is False or action.default == []:
        return NONE
    return f"`{action.default}`"


def cell_problems(action: argparse.Action, row: dict[str, str]) -> list[str]:
    problems = []
    value, default = row["value"], row["default"]
    if action.choices:
        if _quoted(value) != [str(choice) for choice in action.choices]:
            problems.append(f"value {value!r} in the doc, choices {list(action.choices)} in the parser")
    elif action.nargs == 0:
        if value != NONE:
            problems.append(f"value {value!r} in the doc, a switch in the parser")
    else:
        word = TYPE_WORDS.get(action.type)
        claimed = next((w for w in TYPE_WORDS.values() if value.startswith(w)), None)
        if value == NONE or claimed != word:
            problems.append(f"value {value!r} in the doc, {word or 'a text'} in the parser")
    if default != _expected_default(action):
        problems.append(f"default {default!r} in the doc, {_expected_default(action)!r} in the parser")
    return problems


def flag_problems(parser: argparse.ArgumentParser, rows: list[dict[str, str]]) -> list[str]:
    """One line per difference between a command line's parser and its table, each starting with the flag
    (after its command, for a sub-command's flag)."""
    problems, documented = [], {}
    for row in rows:
        flag = ", ".join(_quoted(row["flag"]))
        for command in _quoted(row.get("commands", "")) or [""]:
            if (command, flag) in documented:
                problems.append(f"{_name((command, flag))}: listed twice in the doc")
            documented[(command, flag)] = row
    actual = parser_flags(parser)
    problems += [f"{_name(key)}: in the parser, not in the doc" for key in actual if key not in documented]
    problems += [f"{_name(key)}: in the doc, not in the parser" for key in documented if key not in actual]
    for key in actual.keys() & documented.keys():
        problems += [f"{_name(key)}: {problem}" for problem in cell_problems(actual[key], documented[key])]
    return sorted(problems)


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    return {p.prog: p for p in (built_parser(run_args), analysis_parser(), built_parser(train_args))}


@pytest.fixture(scope="module")
def text() -> str:
    return DOC.read_text()


def test_every_table_is_of_a_command_line_and_every_command_line_has_one(parsers, text):
    assert set(parsers) == {RUN, ANALYSIS, TRAIN}
    assert set(doc_tables(text)) == set(parsers)


@pytest.mark.parametrize("prog", [RUN, ANALYSIS, TRAIN])
def test_the_doc_lists_every_flag_as_its_parser_has_it(prog, parsers, text):
    problems = flag_problems(parsers[prog], doc_tables(text)[prog])
    assert not problems, f"docs/CONFIG.md's Runner flags against {prog}'s parser:\n" + "\n".join(problems)


@pytest.mark.parametrize("prog,old,new,named", [
    (RUN, "| `--verbose` | - | - |", "| `--verbose-log` | - | - |", ["--verbose", "--verbose-log"]),
    (RUN, "| `--storage` | path or URI | `~/ray_results` |", "| `--storage` | path or URI | `~/results` |",
     ["--storage"]),
    (RUN, "| `--space` | name or path | required |", "| `--space` | name or path | - |", ["--space"]),
    (RUN, "| `--wandb-mode` | `online` or `offline` |", "| `--wandb-mode` | `online` |", ["--wandb-mode"]),
    (RUN, "| `--max-failures` | integer |", "| `--max-failures` | number |", ["--max-failures"]),
    (RUN, "| `--num-gpus` | number |", "| `--num-gpus` | count |", ["--num-gpus"]),
    (RUN, "| `--quick` | - |", "| `--quick` | name |", ["--quick"]),
    (RUN, "| `--max-concurrent` | integer | - |", "| `--max-concurrent` | integer | `4` |", ["--max-concurrent"]),
    (ANALYSIS, "| `--seed` | `evaluate`, `all` |", "| `--seed` | `evaluate` |", ["all --seed"]),
    (ANALYSIS, "| `--out` | `compare` | folder | `comparison` |", "| `--out` | `compare` | folder | - |",
     ["compare --out"]),
    (ANALYSIS, "| `--n-prompts` | `evaluate`, `all` | positive integer | - |",
     "| `--n-prompts` | `evaluate`, `all`, `plot` | positive integer | - |", ["plot --n-prompts"]),
    (TRAIN, "| `--out_dir`, `--out-dir` |", "| `--out_dir` |", ["--out_dir", "--out_dir, --out-dir"]),
])
def test_a_table_that_differs_from_its_parser_names_the_flag(prog, old, new, named, parsers, text):
    assert old in text, "the case no longer matches docs/CONFIG.md: update it"
    problems = flag_problems(parsers[prog], doc_tables(text.replace(old, new))[prog])
    assert sorted(problem.split(": ")[0] for problem in problems) == sorted(named), problems


def test_a_flag_added_to_a_parser_but_not_to_the_doc_is_named(text):
    tables = doc_tables(text)
    runner = built_parser(run_args)
    runner.add_argument("--retries", type=int, default=3)
    assert flag_problems(runner, tables[RUN]) == ["--retries: in the parser, not in the doc"]
    analysis = analysis_parser()
    commands = next(a for a in analysis._actions if isinstance(a, argparse._SubParsersAction))
    commands.choices["wandb"].add_argument("--project")
    assert flag_problems(analysis, tables[ANALYSIS]) == ["wandb --project: in the parser, not in the doc"]
