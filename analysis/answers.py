"""Each hypothesis's answer, computed once for the report, the figures and W&B: its trials with their final
error, its variants, the verdict and the trend by the stated rules, and the variants ranked; and per trial, the
errors it scored and the role it plays in each hypothesis it answers.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.ranking import LAST_POSITION_CURVES, final_errors, ranked, variant_frame
from analysis.variants import Variants, hypotheses, of_hypothesis, variants_of
from analysis.verdict import Hypothesis, TrendTest, Verdict, judge, reference_label, trend_test
from trainers.records import FINISHED, SEED_KEY

REFERENCE, VARIANT = "reference", "variant"  # a trial's role in a hypothesis
TRIAL_COLUMNS = ["trial_id", "hypothesis", "variant", "role", SEED_KEY, "status", "error_last", "error_at_d", "d"]


@dataclass(frozen=True)
class Answer:
    hypothesis: str
    trials: pd.DataFrame  # one row per trial of the hypothesis: the summary's columns and `error`
    variants: Variants
    declaration: Hypothesis | None  # what the space declares of it: a reference and expectation, or a trend
    verdict: Verdict | None  # None without a declared reference and expectation
    trend: TrendTest | None
    ranking: pd.DataFrame  # `ranking.variant_frame`, ranked

    def role(self, row) -> str:
        """REFERENCE for a trial of a reference variant (one the others are compared with), else VARIANT."""
        if self.declaration is None or not self.declaration.expect:
            return VARIANT
        settings = {key: row[key] for key in self.variants.keys}
        label = self.variants.label(settings)
        return REFERENCE if reference_label(self.variants, settings, self.declaration) == label else VARIANT


@dataclass(frozen=True)
class Answers:
    items: list[Answer]
    source: str  # where the final errors come from, as `ranking.final_errors` says it


def answers(summary: pd.DataFrame, evaluation: pd.DataFrame | None,
            declared: dict[str, Hypothesis] | None = None) -> Answers:
    errors, source = final_errors(summary, evaluation)
    items = []
    for hypothesis in hypotheses(summary):
        own = of_hypothesis(errors, hypothesis)
        variants = variants_of(own, hypothesis)
        declaration = (declared or {}).get(hypothesis)
        verdict = judge(own, variants, declaration) if declaration is not None and declaration.expect else None
        trend = trend_test(own, variants, declaration) if declaration is not None else None
        items.append(Answer(hypothesis, own, variants, declaration, verdict, trend,
                            ranked(variant_frame(own, variants))))
    return Answers(items, source)


def errors_at_d(evaluation: pd.DataFrame | None) -> pd.DataFrame:
    """Per evaluated trial, `d` (the final curriculum's dimension) and the model's error at k = d in-context
    examples, where least squares first fits exactly: the research's measure of in-context learning."""
    if evaluation is None or evaluation.empty:
        return pd.DataFrame(columns=["trial_id", "error_at_d", "d"])
    rows = evaluation[(evaluation["kind"] == "model") & (evaluation["axis"] == "k")
                      & evaluation["name"].isin(LAST_POSITION_CURVES)
                      & (evaluation["x"] == evaluation["n_dims_truncated"])]
    return (rows.rename(columns={"mean": "error_at_d", "n_dims_truncated": "d"})[["trial_id", "error_at_d", "d"]]
            .drop_duplicates("trial_id"))


def trial_results(found: Answers, evaluation: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (trial, hypothesis): its variant, its role, its seed and status, its final error at the last
    position (`error_last`, what the verdict compares; none unless it finished) and at k = d."""
    rows = [{"trial_id": row["trial_id"], "hypothesis": answer.hypothesis, "variant": answer.variants.label(row),
             "role": answer.role(row), SEED_KEY: row.get(SEED_KEY), "status": row["status"],
             "error_last": row["error"]}
            for answer in found.items for _, row in answer.trials.iterrows()]
    frame = pd.DataFrame(rows, columns=[c for c in TRIAL_COLUMNS if c not in ("error_at_d", "d")])
    frame = frame.merge(errors_at_d(evaluation), on="trial_id", how="left")[TRIAL_COLUMNS]
    # as for error_last: the last checkpoint of a trial that did not finish is not the model training ended with
    return frame.assign(error_at_d=frame["error_at_d"].where(frame["status"] == FINISHED))
