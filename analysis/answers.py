"""Each hypothesis's answer, computed once for the report, the figures and W&B: its trials with their final
error (read from the results frame, `analysis.results`), its variants, the verdict and the trend by the stated
rules, and the variants ranked.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.ranking import ranked, variant_frame
from analysis.study import judge_sequential
from analysis.variants import Variants, hypotheses, of_hypothesis, variants_of
from analysis.verdict import Hypothesis, TrendTest, Verdict, judge, trend_test
from trainers.records import StudyRecord


@dataclass(frozen=True)
class Answer:
    hypothesis: str
    trials: pd.DataFrame  # one row per trial of the hypothesis: the summary's columns and `error` (its error_last)
    results: pd.DataFrame  # the hypothesis' rows of the results frame
    variants: Variants
    declaration: Hypothesis | None  # what the space declares of it: a reference and expectation, or a trend
    verdict: Verdict | None  # None without a declared reference and expectation
    trend: TrendTest | None
    ranking: pd.DataFrame  # `ranking.variant_frame`, ranked


@dataclass(frozen=True)
class Answers:
    items: list[Answer]
    source: str  # where the final errors come from, as `ranking.final_errors` says it


def answers(summary: pd.DataFrame, results: pd.DataFrame, declared: dict[str, Hypothesis] | None = None,
            study: StudyRecord | None = None, at_budget: bool = False) -> Answers:
    """`results`: the frame of `results.parquet` (`analysis.results.results_frame`) for these trials; `study`: a
    sequential study's design (the space record's `decide`), whose rule then gives the verdicts; `at_budget`: its
    runner stopped it at its budget."""
    items = []
    for hypothesis in hypotheses(summary):
        own_results = results[results["hypothesis"] == hypothesis]
        own = of_hypothesis(summary, hypothesis)
        own = own.assign(error=own["trial_id"].map(own_results.set_index("trial_id")["error_last"]).astype(float))
        variants = variants_of(own, hypothesis)
        declaration = (declared or {}).get(hypothesis)
        verdict = None
        if declaration is not None and declaration.expect:
            verdict = (judge(own, variants, declaration) if study is None
                       else judge_sequential(own, variants, declaration, study, at_budget))
        trend = trend_test(own, variants, declaration) if declaration is not None else None
        items.append(Answer(hypothesis, own, own_results, variants, declaration, verdict, trend,
                            ranked(variant_frame(own, variants))))
    return Answers(items, str(results["error_last_source"].iloc[0]))
