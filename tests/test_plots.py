"""The figures of each hypothesis from a tiny synthetic experiment: which are drawn, where they go, how they look."""
import re

import matplotlib.colors
import pytest

from analysis.experiment import read_trials
from analysis.frames import frames_of
from analysis.plots import FIGURES_PER_HYPOTHESIS, PLOTS_DIR, loss_figure, plot_experiment, plot_path, write_plots
from analysis.results import read_results, results_frame
from analysis.variants import of_hypothesis, variants_of
from helpers.experiments import write_experiment
from trainers.layout import RESULTS_FILE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HYPOTHESES = ("information_flow", "looped_n_layers")


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = write_experiment(tmp_path_factory.mktemp("experiment"))
    return frames_of(read_trials(root))


def test_without_an_evaluation_only_the_training_figures_are_drawn(frames, tmp_path):
    curves, summary = frames
    calls = []
    written = write_plots(tmp_path / PLOTS_DIR, curves, summary, progress=lambda: calls.append(1))
    drawn = ("loss", "loss_zoom", "cost")
    assert {p.name for p in written} == {f"{h}_{kind}.png" for h in HYPOTHESES for kind in drawn}
    assert all(p.parent == tmp_path / PLOTS_DIR and p.read_bytes()[:8] == PNG_MAGIC for p in written)
    # a figure left out for want of data still counts as a step of the progress bar
    assert len(calls) == FIGURES_PER_HYPOTHESIS * len(HYPOTHESES)


def test_the_loss_figure_draws_each_variant_in_its_colour_with_its_seed_count(frames):
    curves, summary = frames
    variants = variants_of(of_hypothesis(summary, "information_flow"), "information_flow")
    figure = loss_figure(of_hypothesis(curves, "information_flow"), variants, zoom=False)
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["n_last_tokens=all (2 seeds)", "n_last_tokens=2 (2 seeds)"]
    colours = [matplotlib.colors.to_hex(line.get_color()) for line in lines]
    assert colours == [variants.colour(label) for label in variants.labels]
    assert figure.axes[0].get_yscale() == "log"


def test_the_zoomed_loss_figure_shows_the_last_quarter_of_training(frames):
    curves, summary = frames
    variants = variants_of(of_hypothesis(summary, "looped_n_layers"), "looped_n_layers")
    figure = loss_figure(of_hypothesis(curves, "looped_n_layers"), variants, zoom=True)
    last = curves["step"].max()
    assert figure.axes[0].get_xlim() == pytest.approx((0.75 * last, last))


def test_no_eval_loss_no_loss_figure(frames):
    curves, summary = frames
    variants = variants_of(summary, "h")
    assert loss_figure(curves.drop(columns="eval/loss"), variants, zoom=False) is None
    assert loss_figure(curves.assign(**{"eval/loss": float("nan")}), variants, zoom=True) is None


def test_plot_experiment_writes_into_the_output_directory(tmp_path):
    root = write_experiment(tmp_path / "experiment", with_model=False)
    written = plot_experiment(root, out=tmp_path / "out")
    assert written and all(p.parent == tmp_path / "out" / PLOTS_DIR and p.exists() for p in written)
    assert not (root / PLOTS_DIR).exists()
    # beside them, the results they drew
    assert not (root / RESULTS_FILE).exists() and len(read_results(tmp_path / "out")) == 7


def test_the_figures_draw_the_errors_of_the_results_frame(frames, tmp_path):
    curves, summary = frames
    # without eval/loss no loss figure: the cost figures, the results', are all that is drawn (0.5 s a figure)
    curves = curves.drop(columns="eval/loss")
    results = results_frame(summary, None)
    drawn = write_plots(tmp_path / "drawn", curves, summary, results=results)
    assert {p.name for p in drawn if p.name.endswith("_cost.png")} == {f"{h}_cost.png" for h in HYPOTHESES}
    # the same trials with no final error in the results: nothing to place against its cost
    empty = write_plots(tmp_path / "empty", curves, summary, results=results.assign(error_last=float("nan")))
    assert not [p for p in empty if p.name.endswith("_cost.png")]


def test_a_hypothesis_name_becomes_a_safe_file_name(tmp_path):
    assert plot_path(tmp_path, "looped_n_layers", "cost") == tmp_path / "looped_n_layers_cost.png"
    path = plot_path(tmp_path, "loops vs. depth/2", "cost")
    assert path.parent == tmp_path and re.fullmatch(r"loops_vs\._depth_2-[0-9a-f]{8}_cost\.png", path.name)


@pytest.mark.parametrize("names", [("a/b", "a:b", "a_b"), ("🙂", "🙃", "_"), ("x" * 150 + "1", "x" * 150 + "2")],
                         ids=["separators", "emoji", "long"])
def test_names_that_differ_only_outside_the_slug_get_files_of_their_own(tmp_path, names):
    paths = [plot_path(tmp_path, name, "loss") for name in names]
    assert len(set(paths)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", p.name) and len(p.name) < 255 for p in paths)
