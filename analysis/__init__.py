"""Analysis of a tune-looped experiment directory: dataframes, evaluation against baselines, plots, report, and
the answers in a W&B analysis run."""
from analysis.evaluation import evaluate_experiment
from analysis.experiment import AnalysisError, AnalysisWarning
from analysis.frames import aggregate_seeds, load_curves, load_summary
from analysis.pipeline import export_frames, run_all
from analysis.plots import plot_experiment
from analysis.report import report_experiment
from analysis.wandb_results import log_results

__all__ = ["AnalysisError", "AnalysisWarning", "aggregate_seeds", "evaluate_experiment", "export_frames",
           "load_curves", "load_summary", "log_results", "plot_experiment", "report_experiment", "run_all"]
