"""What REPORT.md and W&B say of a sequential study (`analysis.study`): its design, the looks its runner took with
what each round cost, and each comparison's state; and, for a fixed study, the command that would continue it
as a sequential one.

The states are the rule's (`analysis.sequential.STATES`), worded for a reader: a comparison still open when the
study stopped at its budget is *undecided at the budget*, which the rule alone cannot know, since the budget is
the runner's.
"""
from __future__ import annotations

import math
import shlex
from pathlib import Path

import yaml

from analysis.sequential import BETTER, CAPPED, EQUIVALENT, OPEN, WORSE, rule
from analysis.study import AT_BUDGET, NOT_TESTED, UNDECIDED, design_of, largest_effect, stopped_at_budget
from analysis.verdict import CONTRADICTED, INCONCLUSIVE, SUPPORTED, Comparison, Verdict
from trainers.records import SpaceRecord, StudyRecord
from trainers.table import format_number, render

STATE_COLUMNS = ("state", "look", "largest_effect")  # what `state_columns` adds to a comparison
LEFT_OPEN = (OPEN, CAPPED)  # the comparisons whose interval still allows a difference that matters
WORDS = (f"The hypothesis is **{SUPPORTED}** when every comparison is decided in the predicted direction and "
         f"**{CONTRADICTED}** when any is decided in the opposite one; **{UNDECIDED}** while a comparison is still "
         f"open for a later look, and **{INCONCLUSIVE}** when none is open and some ended without a decision in "
         f"the predicted direction (no difference that large, or undecided at the cap or at the budget). A declared "
         f"trend is tested as in a fixed study, on the seeds so far: its 5% does not hold over the looks.")
BIAS = ("**Reading an early stop.** The mean difference of a comparison decided before the last look is biased "
        "away from zero, since seeds that happen to exaggerate a difference reach a boundary sooner: read its "
        "repeated interval, which holds wherever the study stopped.")


def verdict_rule(study: StudyRecord) -> str:
    """The rule a sequential study's verdicts follow, in words, with what its hypothesis words mean."""
    return f"{rule(design_of(study))} {WORDS}"


def state_word(comparison: Comparison, smallest: float, at_budget: bool) -> str:
    """A comparison's state as the report words it."""
    return {WORSE: f"decided {WORSE}", BETTER: f"decided {BETTER}",
            EQUIVALENT: f"decided: no difference of {smallest:.3g} or more", CAPPED: CAPPED,
            OPEN: AT_BUDGET if at_budget else OPEN, NOT_TESTED: f"{NOT_TESTED} (a seed without a final error)"
            }[comparison.outcome]


def look_of(comparison: Comparison, study: StudyRecord) -> int | None:
    """The look (1 = the first) a comparison stands at: the one whose seeds it has; None before the first."""
    return study.looks.index(comparison.seeds) + 1 if comparison.seeds in study.looks else None


def state_columns(comparison: Comparison, verdict: Verdict, study: StudyRecord, at_budget: bool) -> dict:
    """The columns a sequential comparison adds to the verdict's: its worded state, its look, and for one left
    undecided the largest difference its interval still allows (NaN for a decided one)."""
    allowed = largest_effect(comparison) if comparison.outcome in LEFT_OPEN else math.nan
    return dict(zip(STATE_COLUMNS, (state_word(comparison, verdict.smallest, at_budget), look_of(comparison, study),
                                    allowed)))


def _signed(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.3f}"


def comparison_table(verdict: Verdict, study: StudyRecord, at_budget: bool) -> list[str]:
    """Per comparison: its state, the look it stands at, the seeds a side, the mean difference, the repeated
    interval, the sequential p-value and, left undecided, the largest difference still allowed."""
    looks = len(study.looks)
    rows = []
    for c in verdict.comparisons:
        columns = state_columns(c, verdict, study, at_budget)
        look = "–" if columns["look"] is None else f"{columns['look']} of {looks}"
        interval = "–" if math.isnan(c.lo) else f"[{c.lo:+.3f}, {c.hi:+.3f}]"
        p = "–" if math.isnan(c.p) else f"{c.p:.2g}"
        allowed = columns["largest_effect"]
        rows.append([f"`{c.variant}`", f"`{c.reference}`", columns["state"], look, c.seeds, _signed(c.difference),
                     interval, p, "–" if math.isnan(allowed) else f"{allowed:.3g}"])
    level = f"{1 - study.alpha:.0%}"
    header = ["variant", "reference", "state", "look", "seeds a side", "mean difference",
              f"repeated {level} interval", "sequential p", "largest difference still allowed"]
    return ["### Comparisons", ""] + render(header, rows, markdown=True) + [""]


def _budget(study: StudyRecord) -> str:
    parts = ([f"{study.budget_hours:g} h of wall time"] if study.budget_hours is not None else []) + (
        [f"{study.budget_tflop:g} TFLOP of training"] if study.budget_tflop is not None else [])
    return ("no round starts once the study has spent " + " or ".join(parts)) if parts else "none"


def _seed_schedule(study: StudyRecord) -> str:
    bounds = [0, *study.looks]
    return "; ".join(f"{', '.join(map(str, study.seeds[a:b]))} (look {k})"
                     for k, (a, b) in enumerate(zip(bounds, bounds[1:]), start=1))


def study_lines(record: SpaceRecord) -> list[str]:
    """The study's design, the looks its runner took with each round's cost, how it ended, and the note on
    early stops."""
    study, looks = record.decide, record.looks
    lines = ["## The sequential study", "",
             f"**Design.** Looks at {', '.join(map(str, study.looks))} seeds a variant (the cap: "
             f"{study.looks[-1]}), `{study.spending}` spending of {study.alpha:.0%} a hypothesis over all its "
             f"looks, equivalence margin {study.smallest_effect:g} x the predict-0 error; budget: {_budget(study)}. "
             f"Its seeds, in the order the looks take them: {_seed_schedule(study)}. A round gives seeds only to "
             "the comparisons still open and to their references.", ""]
    if not looks:
        return lines + [f"No look taken yet: the first is at {study.looks[0]} seeds a variant.", "", BIAS, ""]
    rows = [[look.look, look.seeds, look.taken.replace("T", " ")[:19] or "–", format_number(look.round_s / 60),
             format_number(look.round_tflop),
             f"{len(look.open)}: " + ", ".join(f"`{name}`" for name in look.open) if look.open else "0",
             look.ended or "–"] for look in looks]
    rows.append(["total", "–", "–", format_number(sum(look.round_s for look in looks) / 60),
                 format_number(sum(look.round_tflop for look in looks)), "–", "–"])
    header = ["look", "seeds a variant", "taken", "round wall time (min)", "round training TFLOP",
              "comparisons still open after it", "why the study stopped here"]
    lines += ["### Looks", ""] + render(header, rows, markdown=True) + [""]
    last = looks[-1]
    if stopped_at_budget(record) and last.open:
        lines += [f"The study stopped at its budget with {len(last.open)} comparison"
                  f"{'s' * (len(last.open) != 1)} still open: {'they are' if len(last.open) != 1 else 'it is'} "
                  f"**{AT_BUDGET}**, with the interval of the last look.", ""]
    elif not last.ended and last.look < len(study.looks):
        lines += [f"The study goes on: its next look is at {study.looks[last.look]} seeds a variant, for the "
                  "comparisons still open.", ""]
    return lines + [BIAS, ""]


def _flag(name: str, value: str) -> list[str]:
    # a value that starts with a dash, given apart from its flag, would read as a flag of its own
    return [f"{name}={value}"] if value.startswith("-") else [name, value]


def _set_value(value) -> str:
    """A `--set` value that the runner reads back as `value`: the text itself, else YAML's flow spelling."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


def continue_command(record: SpaceRecord, experiment_dir) -> str:
    """The runner's command that continues this fixed study as a sequential one, its first look at the seeds it
    has: the space, `--quick` and `--set` it ran with, and this experiment's folder."""
    folder = Path(experiment_dir).absolute()
    words = ["python", "-m", "tune_looped.run", *_flag("--space", record.source)]
    words += ["--quick"] if record.quick else []
    # its own seeds, not the space's: those of `--seeds` or an extension are the first look's
    words += ["--seeds", ",".join(map(str, record.seeds()))] if record.seeds() else []
    for key, value in record.overrides.items():
        words += ["--set", f"{key}={_set_value(value)}"]
    words += [*_flag("--storage", str(folder.parent)), *_flag("--name", folder.name), "--extend", "--until-decided"]
    return shlex.join(words)


def continuable(record: SpaceRecord | None) -> bool:
    """Whether a fixed study can go on as a sequential one: it names its space, and compares the same
    configurations seed by seed, every trial to its end (no `sample:`, one sample, a fifo scheduler)."""
    return (record is not None and record.decide is None and bool(record.source) and not record.sample
            and record.num_samples == 1 and record.scheduler.get("type", "fifo") == "fifo")


def continue_lines(record: SpaceRecord, experiment_dir) -> list[str]:
    return [f"**Continuing it until decided.** `{continue_command(record, experiment_dir)}` runs this experiment "
            "on as a sequential study, its first look at the seeds it has: rounds of seeds go to the comparisons "
            "still open, and its looks are fixed and paid for in advance, so its verdicts keep their false-alarm "
            "rate, provided the verdict above is not claimed as well (it is not one of the study's looks). "
            "Adding seeds by hand (`--extend --seeds`) and reading this rule again does not: each look is another "
            "chance of a false alarm (docs/ANALYSIS.md, \"Sequential studies\").", ""]
