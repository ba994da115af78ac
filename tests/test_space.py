"""Search spaces: a small grammar turned into trials and Tune objects by pure functions, tested as tables of
inputs and expected outputs. No Ray cluster starts here; building Tune domains and schedulers needs none.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.sample import Categorical, Float, Integer

from analysis.verdict import Trend, hypotheses_of
from trainers.curriculum import curriculum_at
from trainers.records import Evaluation, SpaceRecord
from tune_looped.space import (SPACES_DIR, Distribution, SpaceError, load_space, parse_distribution, space_record,
                               trial_config)
from tune_looped.tune_space import make_scheduler, param_space

# A valid base that every table row can change one thing of; n_head 4 divides n_embd 32.
BASE = {
    "model": {"n_embd": 32, "n_head": 4, "n_layer": 1, "n_dims": 5, "n_positions": 11},
    "training": {"learning_rate": 1e-4, "train_steps": 40,
                 "curriculum": {"dims": {"start": 5, "end": 5}, "points": {"start": 6, "end": 11}}},
}
ONE_EXPERIMENT = [{"name": "a", "grid": {"model.n_layer": [1]}}]


def write_space(tmp_path: Path, space, name: str = "space.yaml") -> Path:
    """A space file from a mapping (base and hypotheses filled in unless given) or verbatim text."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(space, str):
        path.write_text(space)
    else:
        path.write_text(yaml.safe_dump({"base": BASE, "hypotheses": ONE_EXPERIMENT, **space}, sort_keys=False))
    return path


def trial_rows(space) -> list[tuple[dict, tuple]]:
    return [(t.values, t.hypotheses) for t in space.trials]


# ---------------------------------------------------------------------------------------------------------------
# 1. parse_distribution: text -> Distribution, and every bad text -> one SpaceError line saying what is allowed.

@pytest.mark.parametrize("text, kind, args", [
    # PyYAML reads `1e-4` (no dot) as a string under YAML 1.1; researchers mean a number.
    ("loguniform(1e-4, 1e-3)", "loguniform", (1e-4, 1e-3)),
    ("loguniform(1e-4,1e-3)", "loguniform", (1e-4, 1e-3)),
    ("loguniform(0.0001, 0.001)", "loguniform", (1e-4, 1e-3)),
    ("  uniform( -1 , 1.5 )  ", "uniform", (-1, 1.5)),
    ("uniform(.5, 1)", "uniform", (0.5, 1)),
    ("uniform(0, 1E2)", "uniform", (0, 100.0)),
    ("randint(1, 4)", "randint", (1, 4)),
    ("randint(-1, 0)", "randint", (-1, 0)),
    ("choice([20, 25, -1])", "choice", (20, 25, -1)),
    ("choice([z=f(x+z), 'z=f(x*z)'])", "choice", ("z=f(x+z)", "z=f(x*z)")),
    ("choice(['a b', \"c\", d])", "choice", ("a b", "c", "d")),
    ("choice([true, false])", "choice", (True, False)),
    ("choice( [1] )", "choice", (1,)),
], ids=["loguniform-yaml11", "loguniform-no-spaces", "loguniform-decimal", "uniform-spaces-negative",
        "uniform-leading-dot", "uniform-capital-E", "randint", "randint-negative", "choice-ints",
        "choice-loop-funcs", "choice-quoted-strings", "choice-bools", "choice-one"])
def test_parse_distribution(text, kind, args):
    assert parse_distribution(text, "sample.k") == Distribution(kind, args)


@pytest.mark.parametrize("text, types", [
    # randint accepts integer-valued floats; Tune and the int-typed config keys need real ints
    ("randint(1.0, 4.0)", (int, int)),
    ("randint(1, 4)", (int, int)),
], ids=["randint-float-bounds", "randint-int-bounds"])
def test_randint_bounds_are_ints(text, types):
    assert tuple(type(a) for a in parse_distribution(text, "w").args) == types


@pytest.mark.parametrize("text, fragment", [
    ("normal(0, 1)", "expected one of loguniform(...), uniform(...), randint(...), choice(...)"),
    ("garbage", "expected one of loguniform(...)"),
    ("", "expected one of loguniform(...)"),
    ("uniform(1, 2", "expected one of loguniform(...)"),
    ("uniform(1)", "uniform takes two numbers low < high"),
    ("uniform(1, 2, 3)", "uniform takes two numbers low < high"),
    ("uniform(a, b)", "uniform takes two numbers low < high"),
    ("uniform(true, 2)", "uniform takes two numbers low < high"),
    ("uniform(2, 1)", "uniform takes two numbers low < high"),
    ("uniform(1, 1)", "uniform takes two numbers low < high"),
    ("loguniform(0, 1)", "loguniform takes two numbers low < high, low > 0"),
    ("loguniform(-1e-3, 1e-3)", "low > 0"),
    # The message for a non-integer randint bound must say integers: "two numbers low < high" is what was given.
    ("randint(1, 2.5)", "integer"),
    ("randint(0.5, 3)", "integer"),
    ("choice([])", "choice takes a non-empty list"),
    ("choice(a)", "choice takes a non-empty list"),
    ("choice([1], [2])", "choice takes a non-empty list"),
    ("choice([1, 2)", "choice takes a non-empty list"),
    # strings that only look like numbers must still give a SpaceError, not float()'s ValueError
    ("uniform(e, 1)", "uniform takes two numbers"),
    ("uniform(1e, 2)", "uniform takes two numbers"),
    ("uniform(., 1)", "uniform takes two numbers"),
    # an infinite bound would make Tune draw inf/nan learning rates
    ("uniform(0, .inf)", "uniform takes"),
    ("loguniform(1e-4, 1e999)", "loguniform takes"),
], ids=["unknown-name", "garbage", "empty", "unclosed", "one-arg", "three-args", "words", "bool", "low>high",
        "low=high", "loguniform-zero", "loguniform-negative", "randint-float-high", "randint-float-low",
        "choice-empty", "choice-not-list", "choice-two-lists", "choice-bad-yaml", "e", "1e", "dot",
        "uniform-inf", "loguniform-inf"])
def test_parse_distribution_rejects(text, fragment):
    with pytest.raises(SpaceError) as err:
        parse_distribution(text, "space.yaml: sample.k")
    message = str(err.value)
    assert fragment in message and message.startswith("space.yaml: sample.k: ") and "\n" not in message


# ---------------------------------------------------------------------------------------------------------------
# 2. load_space: a space file -> its trials (the varying values and the hypotheses each belongs to).

LOAD_CASES = [
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2],
                                                         "model.use_lstm_layer": [True, False]}}]},
                 False, [({"model.n_layer": 1, "model.use_lstm_layer": True}, ("a",)),
                         ({"model.n_layer": 1, "model.use_lstm_layer": False}, ("a",)),
                         ({"model.n_layer": 2, "model.use_lstm_layer": True}, ("a",)),
                         ({"model.n_layer": 2, "model.use_lstm_layer": False}, ("a",))],
                 id="cross-product-in-order"),
    # The research's shape: the shared configuration (all tokens, 1 layer) runs once, tagged with both; the
    # keys an experiment does not vary are filled from the base (n_layer 1) or the schema default (-1).
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_last_tokens": [2, -1]}},
                                  {"name": "b", "grid": {"model.n_layer": [1, 2]}}]},
                 False, [({"model.n_last_tokens": 2, "model.n_layer": 1}, ("a",)),
                         ({"model.n_last_tokens": -1, "model.n_layer": 1}, ("a", "b")),
                         ({"model.n_last_tokens": -1, "model.n_layer": 2}, ("b",))],
                 id="dedup-tagged-with-all"),
    pytest.param({"base": {**BASE, "model": {**BASE["model"], "n_layer": 2}},
                  "hypotheses": [{"name": "a", "grid": {"model.n_last_tokens": [3]}},
                                  {"name": "b", "grid": {"model.n_layer": [2, 3]}},
                                  {"name": "c", "grid": {"model.n_layer": [2]}}]},
                 False, [({"model.n_last_tokens": 3, "model.n_layer": 2}, ("a",)),
                         ({"model.n_last_tokens": -1, "model.n_layer": 2}, ("b", "c")),
                         ({"model.n_last_tokens": -1, "model.n_layer": 3}, ("b",))],
                 id="base-value-fills-absent-keys"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 1, 2]}}]},
                 False, [({"model.n_layer": 1}, ("a",)), ({"model.n_layer": 2}, ("a",))],
                 id="repeats-within-an-experiment-run-once"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]}}], "seeds": [0, 7]},
                 False, [({"model.n_layer": 1, "training.seed": 0}, ("a",)),
                         ({"model.n_layer": 1, "training.seed": 7}, ("a",)),
                         ({"model.n_layer": 2, "training.seed": 0}, ("a",)),
                         ({"model.n_layer": 2, "training.seed": 7}, ("a",))],
                 id="seeds-multiply"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_last_tokens": [2, -1]}},
                                  {"name": "b", "grid": {"model.n_layer": [1]}}], "seeds": [0]},
                 False, [({"model.n_last_tokens": 2, "model.n_layer": 1, "training.seed": 0}, ("a",)),
                         ({"model.n_last_tokens": -1, "model.n_layer": 1, "training.seed": 0}, ("a", "b"))],
                 id="dedup-before-seeds"),
    # `quick:` replaces base keys, the values of a grid key in every experiment that has it, and the seeds.
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_last_tokens": [20, -1]}},
                                  {"name": "b", "grid": {"model.n_layer": [1, 2]}}], "seeds": [0, 1, 2],
                  "quick": {"base": {"training.train_steps": 10, "model.n_layer": 2},
                            "grid": {"model.n_last_tokens": [4, -1]}, "seeds": [5]}},
                 True, [({"model.n_last_tokens": 4, "model.n_layer": 2, "training.seed": 5}, ("a",)),
                        ({"model.n_last_tokens": -1, "model.n_layer": 2, "training.seed": 5}, ("a", "b")),
                        ({"model.n_last_tokens": -1, "model.n_layer": 1, "training.seed": 5}, ("b",))],
                 id="quick-overrides-base-grid-seeds"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_last_tokens": [20, -1]}}],
                  "quick": {"grid": {"model.n_last_tokens": [4]}}},
                 False, [({"model.n_last_tokens": 20}, ("a",)), ({"model.n_last_tokens": -1}, ("a",))],
                 id="quick-ignored-without-flag"),
    # YAML 1.1 reads 1e-4 as a string: grid values must be typed by the schema before dedup, or the same
    # learning rate written two ways (or filled from the base) becomes two trials.
    pytest.param("base: {model: {n_embd: 32, n_head: 4}, training: {learning_rate: 1e-4}}\n"
                 "hypotheses:\n  - {name: a, grid: {model.n_layer: [1]}}\n"
                 "  - {name: b, grid: {training.learning_rate: [1e-4, 0.0001, 1e-3]}}\n",
                 False, [({"model.n_layer": 1, "training.learning_rate": 1e-4}, ("a", "b")),
                         ({"model.n_layer": 1, "training.learning_rate": 1e-3}, ("b",))],
                 id="yaml11-floats-dedup"),
]


@pytest.mark.parametrize("space, quick, expected", LOAD_CASES)
def test_load_space_trials(tmp_path, space, quick, expected):
    loaded = load_space(write_space(tmp_path, space), quick=quick)
    rows = trial_rows(loaded)
    assert rows == expected
    # dedup compares values, so the types must match too (1e-4 the float, not the string "1e-4")
    assert [{k: type(v) for k, v in r[0].items()} for r in rows] == [{k: type(v) for k, v in e[0].items()}
                                                                     for e in expected]


@pytest.mark.parametrize("quick, train_steps, n_layer", [(False, 40, 1), (True, 10, 2)], ids=["full", "quick"])
@pytest.mark.parametrize("form", ["relative-path", "inline-mapping"])
def test_base_as_relative_path_or_inline_mapping(tmp_path, form, quick, train_steps, n_layer):
    # A path is relative to the space file, not to the working directory (the test runs from elsewhere).
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(yaml.safe_dump(BASE))
    base = "../configs/base.yaml" if form == "relative-path" else BASE
    path = write_space(tmp_path, {
        "base": base, "hypotheses": [{"name": "a", "grid": {"model.n_last_tokens": [2]}}],
        "quick": {"base": {"training.train_steps": 10, "model.n_layer": 2}},
    }, name="spaces/space.yaml")
    space = load_space(path, quick=quick)
    assert space.base["training"]["train_steps"] == train_steps and space.base["model"]["n_layer"] == n_layer
    assert space.base["model"]["n_embd"] == 32
    assert trial_rows(space) == [({"model.n_last_tokens": 2}, ("a",))]


def test_space_settings_and_defaults(tmp_path):
    # Without settings: fifo, eval/loss min, one sample, one CPU per trial (a missing cpu must not mean 0).
    plain = load_space(write_space(tmp_path, {}, name="plain.yaml"))
    assert (plain.scheduler, plain.metric, plain.mode, plain.num_samples, plain.max_concurrent) == (
        {"type": "fifo"}, "eval/loss", "min", 1, None)
    assert plain.resources == {"cpu": 1, "gpu": 0} and plain.name == "plain" and plain.sample == {}
    assert plain.evaluation == Evaluation(n_prompts=1280, seed=0, max_loops=None)
    full = load_space(write_space(tmp_path, {
        "name": "study", "resources": {"gpu": 0.25}, "scheduler": {"type": "asha", "grace_period": 5},
        "metric": "eval/loss_last", "mode": "max", "max_concurrent": 3, "num_samples": 2,
        "sample": {"training.learning_rate": "loguniform(1e-4, 1e-3)"},
        "wandb": {"enabled": True, "project": "p", "group": "g"}, "evaluation": {"n_prompts": 64, "max_loops": 9},
    }, name="full.yaml"))
    assert full.evaluation == Evaluation(n_prompts=64, seed=0, max_loops=9)
    # the record keeps it as the space gave it, for every later analysis of the experiment
    record = SpaceRecord.model_validate(yaml.safe_load(yaml.safe_dump(space_record(full, False).model_dump())))
    assert record.evaluation == full.evaluation
    assert full.name == "study" and full.resources == {"cpu": 1, "gpu": 0.25}
    assert full.scheduler == {"type": "asha", "grace_period": 5}
    assert (full.metric, full.mode) == ("eval/loss_last", "max")
    assert (full.max_concurrent, full.num_samples) == (3, 2) and full.wandb == {"enabled": True, "project": "p",
                                                                                 "group": "g"}
    assert full.sample == {"training.learning_rate": Distribution("loguniform", (1e-4, 1e-3))}
    assert full.varying_keys == ["model.n_layer", "training.learning_rate"]


@pytest.mark.parametrize("name, configurations", [
    ("hypotheses", 10), ("information_flow", 5), ("looped_n_layers", 3), ("looped_lstm", 6), ("baseline", 1),
])
@pytest.mark.parametrize("quick, seeds, train_steps", [(False, [0, 1, 2], 20001), (True, [0, 1, 2], 2400)],
                         ids=["full", "quick"])
def test_shipped_spaces(name, configurations, quick, seeds, train_steps):
    space = load_space(name, quick=quick)
    assert space.path == SPACES_DIR / f"{name}.yaml"
    # every configuration once per seed, three in the quick study too: the verdict's test decides nothing at two
    assert len(space.trials) == configurations * len(seeds)
    for values in {tuple((k, v) for k, v in t.values.items() if k != "training.seed") for t in space.trials}:
        assert sorted(t.values["training.seed"] for t in space.trials
                      if tuple((k, v) for k, v in t.values.items() if k != "training.seed") == values) == seeds
    assert space.base["training"]["train_steps"] == train_steps


def test_hypotheses_share_the_one_layer_all_tokens_transformer():
    for quick, seeds in ((False, [0, 1, 2]), (True, [0, 1, 2])):
        space = load_space("hypotheses", quick=quick)
        shared = [t for t in space.trials if len(t.hypotheses) == 3]
        assert [t.values for t in shared] == [
            {"model.n_last_tokens": -1, "model.n_layer": 1, "model.use_lstm_layer": False, "training.seed": s}
            for s in seeds]


@pytest.mark.parametrize("quick", [False, True])
def test_the_information_flow_trend_reaches_the_report(quick):
    record = space_record(load_space("hypotheses", quick=quick), quick).model_dump()
    assert [e["trend"] for e in record["hypotheses"]] == [
        {"key": "model.n_last_tokens", "error": "decreasing"}, None, None]
    declared = hypotheses_of(SpaceRecord.model_validate(yaml.safe_load(yaml.safe_dump(record))))
    assert declared["information_flow"].trend == Trend("model.n_last_tokens", "decreasing")
    assert declared["looped_n_layers"].trend is None


def _bites_at(config, n_last_tokens: int) -> float:
    """The share of training after which a mask of n_last_tokens changes anything (prompt longer than N)."""
    steps = config.training.train_steps
    return next(s for s in range(steps) if 2 * curriculum_at(config.training.curriculum, s).n_points > n_last_tokens) / steps


def test_quick_study_keeps_the_research_ratios():
    full, quick = load_space("hypotheses"), load_space("hypotheses", quick=True)
    research, miniature = (trial_config(s.base, s.trials[0].values) for s in (full, quick))
    masks = [sorted({t.values["model.n_last_tokens"] for t in s.trials} - {-1}) for s in (full, quick)]
    assert len(masks[0]) == len(masks[1])
    tokens = [2 * c.training.curriculum.points.end for c in (research, miniature)]
    for n_research, n_quick in zip(*masks):
        # the share of the final prompt each mask keeps, and when in training it starts to bite
        assert n_quick / tokens[1] == pytest.approx(n_research / tokens[0], abs=0.02)
        assert _bites_at(miniature, n_quick) == pytest.approx(_bites_at(research, n_research), abs=0.02)
    for config in (research, miniature):
        c, steps = config.training.curriculum, config.training.train_steps
        # the prompt grows from d + 1 to 4d + 1 points and is full at 75% of training
        assert (c.points.start, c.points.end) == (c.dims.end + 1, 4 * c.dims.end + 1)
        full_at = next(s for s in range(steps) if curriculum_at(c, s).n_points == c.points.end) / steps
        assert full_at == pytest.approx(0.75, abs=0.01)
        # loops: b starts at the window T, ends at 2 T, and is final at 20% of training
        assert c.loops.start == config.training.n_loop_window == c.loops.end // 2
        final_at = next(s for s in range(steps) if curriculum_at(c, s).n_loops == c.loops.end) / steps
        assert final_at == pytest.approx(0.20, abs=0.01)


@pytest.mark.parametrize("text", ["hypotheses", "hypotheses.yaml", str(SPACES_DIR / "hypotheses.yaml")])
def test_bare_name_resolves_in_the_package(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bare name is found from any working directory
    assert load_space(text).path.resolve() == (SPACES_DIR / "hypotheses.yaml").resolve()


KEY = "fakekey" + "0123456789abcdef" * 2


@pytest.mark.parametrize("quick_base, files", [
    ({"wandb.key": KEY, "training.train_steps": 5}, {}),
    ({"wandb": {"key": KEY}, "training.train_steps": 5}, {}),
    ("quick.yaml", {"quick.yaml": f"wandb.key: {KEY}\ntraining.train_steps: 5\n"}),
    # the quick block's key wins over the base's, as its other keys do
    ({"wandb.key": KEY}, {"base.yaml": yaml.safe_dump({**BASE, "wandb": {"key": "the-base-key"}})}),
], ids=["dotted", "nested", "file", "over-the-base-key"])
def test_a_wandb_key_in_the_quick_block_is_the_key_used_and_in_no_file(tmp_path, quick_base, files):
    from trainers.records import write_space_record
    from tune_looped.space import space_record

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    base = "base.yaml" if "base.yaml" in files else BASE
    space = load_space(write_space(tmp_path, {"base": base, "quick": {"base": quick_base}}), quick=True)
    assert space.secrets == {"wandb.key": KEY}
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    write_space_record(experiment, space_record(space, True))
    assert KEY not in repr(space.base) and KEY not in (experiment / "space.yaml").read_text()


# ---------------------------------------------------------------------------------------------------------------
# 3. param_space / make_scheduler: the Space -> Ray Tune's param_space and scheduler.

DEDUP = [{"name": "a", "grid": {"model.n_last_tokens": [2, -1]}}, {"name": "b", "grid": {"model.n_layer": [1, 2]}}]
# in run order: the 2-layer trial costs the most FLOPs; the two 1-layer ones tie and keep the space's order
DEDUP_VARIANTS = [{"hypotheses": ["b"], "model.n_last_tokens": -1, "model.n_layer": 2},
                  {"hypotheses": ["a"], "model.n_last_tokens": 2, "model.n_layer": 1},
                  {"hypotheses": ["a", "b"], "model.n_last_tokens": -1, "model.n_layer": 1}]


@pytest.mark.parametrize("sample, expected", [
    ({}, {}),
    ({"training.learning_rate": "loguniform(1e-4, 1e-3)"},
     {"training.learning_rate": (Float, "_LogUniform", 1e-4, 1e-3)}),
    ({"training.weight_decay": "uniform(0, 0.1)"}, {"training.weight_decay": (Float, "_Uniform", 0, 0.1)}),
    # the grammar's randint includes its upper end; Tune's excludes it, hence 5
    ({"training.sparsity": "randint(1, 4)"}, {"training.sparsity": (Integer, "_Uniform", 1, 5)}),
    ({"model.loop_func": "choice(['z=f(x+z)', 'z=f(x*z)'])", "training.learning_rate": "uniform(1e-4, 1e-3)"},
     {"model.loop_func": (Categorical, "_Uniform", ["z=f(x+z)", "z=f(x*z)"]),
      "training.learning_rate": (Float, "_Uniform", 1e-4, 1e-3)}),
], ids=["grid-only", "loguniform", "uniform", "randint", "choice-and-uniform"])
def test_param_space(tmp_path, sample, expected):
    space = load_space(write_space(tmp_path, {"hypotheses": DEDUP, "sample": sample}))
    params = param_space(space)
    assert list(params) == ["variant", *expected]
    # the grid is the deduplicated trial list, each variant carrying its experiment tags
    assert params["variant"] == {"grid_search": DEDUP_VARIANTS}
    assert sorted(map(str, params["variant"]["grid_search"])) == sorted(
        str({"hypotheses": list(t.hypotheses), **t.values}) for t in space.trials)
    for key, (cls, sampler, *bounds) in expected.items():
        domain = params[key]
        assert type(domain) is cls and type(domain.get_sampler()).__name__ == sampler
        if cls is Categorical:
            assert domain.categories == bounds[0]
        else:
            assert (domain.lower, domain.upper) == pytest.approx(tuple(bounds))


def test_randint_draws_its_upper_bound_as_validated(tmp_path):
    # load_space validates a randint at both ends (low and high), as Python's random.randint reads them, but
    # tune.randint excludes high: `randint(1, 3)` never draws 3, and a space whose high is invalid but never
    # drawn is rejected. The grammar should be inclusive (pass high + 1 to tune.randint) or validate high - 1.
    space = load_space(write_space(tmp_path, {"sample": {"training.sparsity": "randint(1, 3)"}}))
    drawn = set(int(v) for v in param_space(space)["training.sparsity"].sample(size=300, random_state=0))
    assert drawn == {1, 2, 3}


@pytest.mark.parametrize("scheduler, grid_steps, cls, settings", [
    (None, None, FIFOScheduler, {}),
    ("fifo", None, FIFOScheduler, {}),
    # max_t defaults to the base's train_steps (the longest trial's, when a grid varies it)
    ("asha", None, ASHAScheduler, {"_max_t": 40, "_reduction_factor": 4, "_time_attr": "step"}),
    ({"type": "asha", "grace_period": 5, "reduction_factor": 2}, None, ASHAScheduler,
     {"_max_t": 40, "_reduction_factor": 2}),
    ({"type": "asha", "max_t": 30}, None, ASHAScheduler, {"_max_t": 30}),
    ("asha", [40, 80], ASHAScheduler, {"_max_t": 80}),
], ids=["default", "fifo", "asha-default-max_t", "asha-options", "asha-max_t", "asha-longest-trial"])
def test_make_scheduler(tmp_path, scheduler, grid_steps, cls, settings):
    space = {} if scheduler is None else {"scheduler": scheduler}
    if grid_steps:
        space["hypotheses"] = [{"name": "a", "grid": {"training.train_steps": grid_steps}}]
    made = make_scheduler(load_space(write_space(tmp_path, space)))
    assert type(made) is cls
    assert {k: getattr(made, k) for k in settings} == settings


def test_asha_max_t_follows_quick_base(tmp_path):
    space = load_space(write_space(tmp_path, {"scheduler": "asha", "quick": {"base": {"training.train_steps": 12}}}),
                       quick=True)
    assert make_scheduler(space)._max_t == 12


# ---------------------------------------------------------------------------------------------------------------
# 4. Bad space files: one SpaceError line naming the file and the key, and saying what is allowed.

BAD_SPACES = [
    pytest.param({"bogus": 1}, False, ["bogus", "unknown key", "allowed: name, description, base"],
                 id="unknown-top-level-key"),
    # the space's name is the default experiment folder under --storage
    pytest.param({"name": "../x"}, False, ["name: must be a folder name", "got '../x'"], id="name-leaves-storage"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.nope": [1]}}]}, False,
                 ["model.nope", "unknown key", "model has: family"], id="unknown-dotted-key"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"modle.n_layer": [1]}}]}, False,
                 ["modle.n_layer", "top level has: model, training"], id="unknown-section"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": ["two"]}}]}, False,
                 ["model.n_layer", "expected an integer", "'two'"], id="wrong-type-in-grid"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.use_lstm_layer": ["yes please"]}}]}, False,
                 ["model.use_lstm_layer", "true or false"], id="wrong-bool-in-grid"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {}}]}, False,
                 ["hypotheses[0].grid", "empty grid", "at least one key"], id="empty-grid"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": 2}}]}, False,
                 ["model.n_layer", "non-empty list"], id="grid-value-not-list"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": []}}]}, False,
                 ["model.n_layer", "non-empty list"], id="grid-value-empty-list"),
    pytest.param({"hypotheses": [{"name": "a"}]}, False, ["hypotheses[0].grid", "expected a mapping"],
                 id="experiment-without-grid"),
    pytest.param("hypotheses: [{name: a, grid: {model.n_layer: [1]}}]\n", False,
                 ["base", "missing", "config file path or a mapping"], id="missing-base"),
    # the message names the space file and `base`, not only the missing file
    pytest.param({"base": "nope.yaml"}, False, ["base", "nope.yaml", "cannot read"], id="base-file-missing"),
    pytest.param({"base": [1]}, False, ["base", "expected a mapping"], id="base-not-mapping"),
    pytest.param({"base": {"model": {"bogus": 1}}}, False, ["base", "model.bogus", "allowed: family"],
                 id="base-unknown-key"),
    pytest.param({"sample": {"training.learning_rate": "normal(0, 1)"}}, False,
                 ["sample.training.learning_rate", "expected one of loguniform(...)"], id="bad-distribution"),
    pytest.param({"sample": {"model.nope": "uniform(0, 1)"}}, False, ["model.nope", "unknown key"],
                 id="sample-unknown-key"),
    pytest.param({"sample": {"model.n_layer": "choice([1, two])"}}, False, ["model.n_layer", "expected an integer"],
                 id="sample-choice-wrong-type"),
    # uniform(1, 3) on an integer key would draw 2.37
    pytest.param({"sample": {"model.n_layer": "uniform(1, 3)"}}, False, ["model.n_layer", "integer"],
                 id="uniform-on-int-key"),
    pytest.param({"resources": {"gpu": 1.5}}, False, ["resources.gpu", "between 0 and 1"], id="gpu-over-1"),
    pytest.param({"resources": {"gpu": -0.5}}, False, ["resources.gpu", "between 0 and 1"], id="gpu-negative"),
    pytest.param({"resources": {"cpu": 0}}, False, ["resources.cpu", "> 0"], id="cpu-0"),
    pytest.param({"resources": {"memory": 1}}, False, ["resources.memory", "allowed: cpu, gpu"],
                 id="resources-unknown-key"),
    pytest.param({"scheduler": "hyperband"}, False, ["scheduler", "fifo, asha", "'hyperband'"],
                 id="unknown-scheduler"),
    pytest.param({"scheduler": {"type": "asha", "patience": 3}}, False,
                 ["scheduler.patience", "unknown asha option", "allowed: max_t, grace_period"],
                 id="unknown-asha-option"),
    pytest.param({"scheduler": {"type": "fifo", "max_t": 3}}, False, ["scheduler.max_t", "allowed: none"],
                 id="fifo-option"),
    pytest.param({"scheduler": {"type": "asha", "grace_period": 0}}, False,
                 ["scheduler.grace_period", "positive integer"], id="asha-option-not-positive"),
    pytest.param({"hypotheses": {"name": "a", "grid": {"model.n_layer": [1]}}}, False,
                 ["hypotheses", "non-empty list"], id="hypotheses-not-list"),
    pytest.param({"hypotheses": []}, False, ["hypotheses", "non-empty list"], id="hypotheses-empty"),
    pytest.param({"hypotheses": [{"grid": {"model.n_layer": [1]}}]}, False,
                 ["hypotheses[0].name", "non-empty string"], id="experiment-without-name"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1]}, "runs": 2}]}, False,
                 ["hypotheses[0].runs", "allowed: name, grid"], id="experiment-unknown-key"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]}, "reference": {"model.n_layer": 1}}]},
                 False, ["hypotheses[0]", "reference and expect go together"], id="reference-without-expect"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]}, "expect": "worse"}]},
                 False, ["hypotheses[0]", "reference and expect go together"], id="expect-without-reference"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]}, "reference": {"model.n_layer": 1},
                                   "expect": "lower"}]},
                 False, ["hypotheses[0].expect", "one of worse, better", "'lower'"], id="expect-unknown"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]}, "reference": {"model.n_layer": 3},
                                   "expect": "better"}]},
                 False, ["hypotheses[0].reference.model.n_layer", "3 is not a value of the hypothesis' grid"],
                 id="reference-not-in-grid"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]},
                                   "reference": {"model.n_last_tokens": -1}, "expect": "worse"}]},
                 False, ["reference.model.n_last_tokens", "not a value of the hypothesis' grid"],
                 id="reference-key-not-in-grid"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]}, "reference": {"model.n_layr": 1},
                                   "expect": "worse"}]},
                 False, ["reference.model.n_layr", "unknown key"], id="reference-unknown-key"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]},
                                   "trend": {"key": "model.n_last_tokens", "error": "decreasing"}}]},
                 False, ["hypotheses[0].trend.key", "'model.n_last_tokens' is not a key of the hypothesis' grid",
                         "its keys: model.n_layer"], id="trend-key-not-in-grid"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]},
                                   "trend": {"key": "model.n_layer", "error": "lower"}}]},
                 False, ["hypotheses[0].trend.error", "one of increasing, decreasing", "'lower'"], id="trend-unknown"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]}, "trend": {"key": "model.n_layer"}}]},
                 False, ["hypotheses[0].trend.error", "missing"], id="trend-without-error"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.loop_func": ["z=f(x+z)", "z=f(x*z)"]},
                                   "trend": {"key": "model.loop_func", "error": "increasing"}}]},
                 False, ["hypotheses[0].trend.key", "numbers or true/false"], id="trend-key-not-sortable"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [2], "model.n_last_tokens": [4, -1]},
                                   "trend": {"key": "model.n_layer", "error": "increasing"}}]},
                 False, ["hypotheses[0].trend.key", "at least 2 values"], id="trend-one-value"),
    pytest.param({"seeds": [0, "1"]}, False, ["seeds", "list of integers"], id="seeds-not-integers"),
    pytest.param({"seeds": [0, True]}, False, ["seeds", "list of integers"], id="seeds-bool"),
    pytest.param({"seeds": 3}, False, ["seeds", "list of integers"], id="seeds-not-list"),
    pytest.param({"seeds": [0, 2**64]}, False, ["seeds: must be a non-empty list of integers from 0 to 2**64 - 1",
                                                 "got [0, 18446744073709551616]"], id="seeds-beyond-torch"),
    pytest.param({"quick": {"seeds": [-1]}}, False, ["quick.seeds", "from 0 to 2**64 - 1"], id="quick-seeds-negative"),
    pytest.param({"num_samples": 0}, False, ["num_samples", "positive integer"], id="num_samples-0"),
    pytest.param({"max_concurrent": 0}, False, ["max_concurrent", "positive integer"], id="max_concurrent-0"),
    pytest.param({"mode": "median"}, False, ["mode", "min, max", "'median'"], id="mode-median"),
    pytest.param({"evaluation": {"n_prompts": 0}}, False, ["evaluation.n_prompts: must be a positive integer, got 0"],
                 id="evaluation-no-prompts"),
    pytest.param({"evaluation": {"max_loops": 2.5}}, False, ["evaluation.max_loops", "expected an integer", "2.5"],
                 id="evaluation-max-loops-float"),
    pytest.param({"evaluation": {"seed": -1}}, False, ["evaluation.seed", "from 0 to 2**64 - 1", "got -1"],
                 id="evaluation-seed-negative"),
    pytest.param({"evaluation": {"prompts": 64}}, False, ["evaluation.prompts", "allowed: n_prompts, seed, max_loops"],
                 id="evaluation-unknown-key"),
    pytest.param({"metric": ""}, False, ["metric", "must be one of step, overall_loss", "got ''"], id="metric-empty"),
    # ASHA on a key no trial reports would silently stop nothing
    pytest.param({"metric": "eval/los", "scheduler": "asha"}, False,
                 ["metric: must be one of step, overall_loss", "eval/loss_last, got 'eval/los'"], id="metric-misspelt"),
    # the verdict reads each hypothesis' reference and expect by its name
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2]}, "reference": {"model.n_layer": 1},
                                  "expect": "better"}, {"name": "a", "grid": {"model.n_last_tokens": [4, -1]}}]},
                 False, ["hypotheses[1].name: must differ from every other hypothesis' name, got 'a' (the name of "
                         "hypotheses[0])"], id="hypothesis-names-repeated"),
    pytest.param({"wandb": {"api_key": "x"}}, False, ["wandb.api_key", "allowed: enabled"], id="wandb-unknown-key"),
    # each resolved configuration is validated before Ray starts: 3 heads do not divide n_embd 32
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_head": [4, 3]}}]}, False,
                 ["n_head=3", "model.n_head", "divisor of n_embd=32"], id="resolved-trial-invalid"),
    pytest.param({}, True, ["quick", "needs a quick: block"], id="quick-without-block"),
    pytest.param({"quick": {"steps": 1}}, True, ["quick.steps", "allowed: base, grid, seeds"], id="quick-unknown-key"),
    pytest.param({"quick": {"base": {"model.nope": 1}}}, True, ["quick.base", "model.nope", "unknown key"],
                 id="quick-base-unknown-key"),
    pytest.param({"quick": {"base": {"model.n_head": 3}}}, True, ["model.n_head", "divisor"],
                 id="quick-base-invalid"),
    # a typo in quick.grid must not silently run the full-size grid values
    pytest.param({"quick": {"grid": {"model.n_layr": [2]}}}, True, ["quick.grid", "model.n_layr", "unknown key"],
                 id="quick-grid-unknown-key"),
    # a missing base file under --quick is a SpaceError, not a traceback
    pytest.param({"base": "nope.yaml", "quick": {"base": {"training.train_steps": 5}}}, True,
                 ["base", "nope.yaml", "cannot read"], id="quick-base-file-missing"),
    # a section in quick.base is a SpaceError naming it
    pytest.param({"quick": {"base": {"training.curriculum": {"dims": {"start": 1}}}}}, True,
                 ["quick.base", "training.curriculum", "is a section"], id="quick-base-section"),
    # quick.base must not stand in for a missing base
    pytest.param("hypotheses: [{name: a, grid: {model.n_layer: [1]}}]\nquick: {base: {training.train_steps: 5}}\n",
                 True, ["base", "missing"], id="quick-hides-missing-base"),
    pytest.param("base: {model: {n_layer: 1}\nhypotheses: [\n", False, ["not valid YAML"], id="invalid-yaml"),
    pytest.param("", False, ["expected a mapping"], id="empty-file"),
    pytest.param("base: base.yaml\nhypotheses: []\nseeds: [0]\nseeds: [1]\n", False,
                 ["seeds: key given twice (lines 3 and 4)"], id="duplicate-key"),
    pytest.param("- base\n", False, ["expected a mapping"], id="top-level-list"),
]


@pytest.mark.parametrize("space, fragment", [
    ({"hypotheses": [{"name": "a", "grid": {"training.learning_rate": [i / 1000 for i in range(1, 1001)],
                                            "training.batch_size": list(range(1, 1001))}}]},
     "hypotheses[0].grid: at most 6 trials a space, got 1000000 (1000 training.learning_rate x 1000 "
     "training.batch_size)"),
    ({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2, 3]}}], "seeds": [0, 1], "num_samples": 2},
     "hypotheses[0].grid: at most 6 trials a space, got 12 (3 model.n_layer x 2 seeds x num_samples 2)"),
    # each grid fits, their union does not; repeated values count once
    ({"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2, 2]}},
                     {"name": "b", "grid": {"model.n_last_tokens": [3, 4]}}], "seeds": [0, 1]},
     "hypotheses: at most 6 trials a space, got 8 (4 configurations x 2 seeds)"),
], ids=["one-grid", "seeds-and-samples", "union"])
def test_a_space_beyond_the_trial_cap_is_refused_before_its_trials_are_built(tmp_path, monkeypatch, space,
                                                                              fragment):
    monkeypatch.setattr("tune_looped.space.MAX_TRIALS", 6)
    built = []
    monkeypatch.setattr("tune_looped.space.trial_config", lambda *args: built.append(args))
    path = write_space(tmp_path, space)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(err.value) == f"{path}: {fragment}" and not built


def test_a_space_at_the_trial_cap_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("tune_looped.space.MAX_TRIALS", 6)
    space = {"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2, 3]}}], "seeds": [0, 1]}
    assert len(load_space(write_space(tmp_path, space)).trials) == 6


def test_each_configuration_is_validated_once_whatever_its_seeds(tmp_path, monkeypatch):
    import tune_looped.space as space_module

    validated, real = [], space_module.trial_config

    def counted(base, values, source):
        validated.append(values)
        return real(base, values, source)

    monkeypatch.setattr(space_module, "trial_config", counted)
    space = {"hypotheses": [{"name": "a", "grid": {"model.n_layer": [1, 2, 3]}}], "seeds": [0, 1, 2, 3],
             "sample": {"training.learning_rate": "loguniform(1e-4, 1e-3)"}}
    assert len(load_space(write_space(tmp_path, space)).trials) == 12
    # one seed for each configuration, at both ends of the sampled learning rate
    assert [(v["model.n_layer"], v["training.seed"], v["training.learning_rate"]) for v in validated] == [
        (n, 0, lr) for n in (1, 2, 3) for lr in (1e-4, 1e-3)]


def test_an_invalid_configuration_is_named_by_its_first_trial(tmp_path):
    space = {"hypotheses": [{"name": "a", "grid": {"model.n_head": [4, 3]}}], "seeds": [5, 6]}
    with pytest.raises(SpaceError, match=r"trial n_head=3 seed=5: model\.n_head: must be a positive divisor"):
        load_space(write_space(tmp_path, space))


def test_seeds_given_to_load_space_are_checked(tmp_path):
    with pytest.raises(SpaceError, match=r"seeds: must be an integer from 0 to 2\*\*64 - 1"):
        load_space(write_space(tmp_path, {}), seeds=[0, 2**64])


@pytest.mark.parametrize("space, quick, fragments", BAD_SPACES)
def test_bad_space(tmp_path, space, quick, fragments):
    path = write_space(tmp_path, space)
    with pytest.raises(SpaceError) as err:
        load_space(path, quick=quick)
    message = str(err.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{missing} not in {message!r}"


def test_the_earlier_spelling_experiments_still_loads_with_a_warning(tmp_path):
    text = yaml.safe_dump({"base": BASE, "experiments": [{"name": "a", "description": "Q?",
                                                          "grid": {"model.n_layer": [1, 2]}}]})
    with pytest.warns(FutureWarning, match=r"experiments: renamed to hypotheses"):
        space = load_space(write_space(tmp_path, text))
    assert [h.name for h in space.hypotheses] == ["a"] and space.hypotheses[0].question == "Q?"
    assert trial_rows(space) == [({"model.n_layer": 1}, ("a",)), ({"model.n_layer": 2}, ("a",))]
    # an error in a file of the earlier spelling names the key the file uses
    text = yaml.safe_dump({"base": BASE, "experiments": [{"name": "a", "grid": {}}]})
    with pytest.warns(FutureWarning), pytest.raises(SpaceError, match=r"experiments\[0\]\.grid: empty grid"):
        load_space(write_space(tmp_path, text))


@pytest.mark.parametrize("space, fragment", [
    ({"experiments": ONE_EXPERIMENT}, "experiments: the earlier spelling of hypotheses; give one of the two"),
    ({"hypotheses": None}, "hypotheses: missing; expected a non-empty list of hypotheses, or an include of space "
                           "files that have them"),
], ids=["both", "neither"])
def test_hypotheses_and_experiments_are_one_key(tmp_path, space, fragment):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "hypotheses": ONE_EXPERIMENT, **space}))
    if space.get("hypotheses", "") is None:
        path.write_text(yaml.safe_dump({"base": BASE}))
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(err.value) == f"{path}: {fragment}"


def test_an_experiment_recorded_before_the_rename_still_resumes(tmp_path):
    from trainers.records import SPACE_RECORD
    from tune_looped.inputs import check_resumable
    from tune_looped.space import space_record

    space = load_space("hypotheses", quick=True)
    record = space_record(space, True).model_dump()
    # the earlier runner's spelling and its shorter questions
    record["experiments"] = [{**{k: v for k, v in h.items() if k != "question"}, "description": "old wording"}
                             for h in record.pop("hypotheses")]
    record["trials"] = [{"experiments": t["hypotheses"], "values": t["values"]} for t in record["trials"]]
    experiment = tmp_path / "old"
    experiment.mkdir()
    (experiment / SPACE_RECORD).write_text(yaml.safe_dump(record, sort_keys=False))
    for name in ("tuner.pkl", "experiment_state-2026-01-01_00-00-00.json"):
        (experiment / name).write_text("")
    check_resumable(experiment, space, quick=True)
    record["trials"][0]["values"]["model.n_last_tokens"] = 9
    (experiment / SPACE_RECORD).write_text(yaml.safe_dump(record, sort_keys=False))
    with pytest.raises(SpaceError, match=r"--resume: trials differs"):
        check_resumable(experiment, space, quick=True)


@pytest.mark.parametrize("make_arg, fragment", [
    (lambda tmp_path: "no_such_space", "no_such_space: no such space file"),
    (lambda tmp_path: str(tmp_path / "missing.yaml"), "missing.yaml: no such space file"),
    # a folder (`--space search_spaces/`) exists but is not a space file
    (lambda tmp_path: str(tmp_path), "not a file"),
], ids=["bare-name", "path", "directory"])
def test_space_that_cannot_be_found(tmp_path, make_arg, fragment):
    with pytest.raises(SpaceError) as err:
        load_space(make_arg(tmp_path))
    assert fragment in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# 5. The CLI: --dry-run prints the trials without Ray; a bad space is one line, exit 2, nothing written.

def run_cli(commands, *args, cwd, timeout=60):
    """`python -m tune_looped.run` as a fresh interpreter runs it, forked from the tests' command server."""
    return commands.run(["-m", "tune_looped.run", *args], cwd=cwd, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("args, count, tags", [
    (["--space", "hypotheses"], 30, "information_flow,looped_n_layers,looped_lstm"),
    (["--space", "hypotheses.yaml", "--quick"], 30, "information_flow,looped_n_layers,looped_lstm"),
    (["--space", str(SPACES_DIR / "baseline.yaml")], 3, "baseline"),
], ids=["hypotheses", "hypotheses-quick", "baseline-path"])
def test_dry_run_prints_table_and_count(tmp_path, commands, args, count, tags):
    storage = tmp_path / "results"
    proc = run_cli(commands, *args, "--dry-run", "--storage", str(storage), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["#", "hypotheses"] and lines[-1].startswith(f"{count} trials, ")
    assert len(lines) == count + 2 and any(tags in line for line in lines)
    # nothing started or written: no storage folder (that Ray is never imported is test_dry_run_does_not_import_ray)
    assert not storage.exists()


@pytest.mark.slow
def test_dry_run_does_not_import_ray(tmp_path):
    code = ("import sys; from tune_looped.run import main; "
            "rc = main(['--space', 'hypotheses', '--dry-run']); "
            "print('ray imported:', any(m == 'ray' or m.startswith('ray.') for m in sys.modules)); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2].startswith("30 trials, ") and proc.stdout.splitlines()[-1] == \
        "ray imported: False"


@pytest.mark.slow
@pytest.mark.parametrize("text", ["", "0,x", "1,1", "0.5"])
def test_bad_seeds_flag(tmp_path, commands, text):
    storage = tmp_path / "results"
    proc = run_cli(commands, "--space", "hypotheses", "--seeds", text, "--storage", str(storage), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and not storage.exists()
    assert proc.stderr.splitlines() == [f"error: argument --seeds: expected distinct integers separated by commas, "
                                        f"like 0,1,2, got {text!r} (see --help)"]


@pytest.mark.slow
def test_seeds_flag_replaces_the_spaces_seeds(tmp_path, commands):
    proc = run_cli(commands, "--space", "hypotheses", "--quick", "--seeds", "7,9,11", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("30 trials, ")
    column = lines[0].split().index("training.seed")
    assert {line.split()[column] for line in lines[1:-1]} == {"7", "9", "11"}


def test_experiment_declares_its_reference(tmp_path):
    hypotheses = [{"name": "a", "grid": {"model.n_layer": [1, 2]}, "reference": {"model.n_layer": 1},
                    "expect": "better"}, {"name": "b", "grid": {"model.n_last_tokens": [4, -1]}}]
    space = load_space(write_space(tmp_path, {"hypotheses": hypotheses}))
    assert [(e.name, e.reference, e.expect) for e in space.hypotheses] == [
        ("a", {"model.n_layer": 1}, "better"), ("b", {}, None)]


@pytest.mark.slow
@pytest.mark.parametrize("space, extra", [
    pytest.param({"bogus": 1}, [], id="unknown-key"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {"model.n_layer": ["two"]}}]}, [], id="wrong-type"),
    pytest.param({"hypotheses": [{"name": "a", "grid": {}}]}, [], id="empty-grid"),
    pytest.param("hypotheses: [{name: a, grid: {model.n_layer: [1]}}]\n", [], id="missing-base"),
    pytest.param({"sample": {"training.learning_rate": "normal(0, 1)"}}, [], id="bad-distribution"),
    pytest.param({"resources": {"gpu": 2}}, [], id="gpu-fraction-over-1"),
    pytest.param({"scheduler": "hyperband"}, [], id="unknown-scheduler"),
    pytest.param({}, ["--quick"], id="quick-without-block"),
    # a missing base file under --quick: one error line and exit 2, not a traceback
    pytest.param({"base": "nope.yaml", "quick": {"base": {"training.train_steps": 5}}}, ["--quick"],
                 id="quick-base-file-missing"),
])
def test_bad_space_cli(tmp_path, commands, space, extra):
    path = write_space(tmp_path, space)
    storage = tmp_path / "results"
    # no --dry-run: validation must stop a real run before Ray starts or the storage folder is made
    proc = run_cli(commands, "--space", str(path), "--storage", str(storage), "--num-cpus", "1", *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], proc.stderr
    assert proc.stdout == "" and not storage.exists()


# ---------------------------------------------------------------------------------------------------------------
# 6. include: a space made of other spaces' hypotheses, and the one hypothesis type from the file to the verdict.

# hypotheses.yaml's configurations, in the order its trials have had since before it included the three files
# (n_last_tokens, n_layer, use_lstm_layer): the masks, then more layers, then the LSTMs
STUDY = [(mask, 1, False) for mask in (20, 25, 55, 75, -1)] + [(-1, 2, False), (-1, 3, False)] + [
    (-1, n_layer, True) for n_layer in (1, 2, 3)]
QUICK_MASKS = {20: 8, 25: 10, 55: 23, 75: 31, -1: -1}
ALL_THREE = ("information_flow", "looped_n_layers", "looped_lstm")


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_hypotheses_is_its_three_files_in_the_trials_order_it_had(quick):
    space = load_space("hypotheses", quick=quick)
    assert len(space.trials) == 30
    expected = []
    for mask, n_layer, lstm in STUDY:
        tags = (("information_flow",) * (n_layer == 1 and not lstm) + ("looped_n_layers",) * (mask == -1 and not lstm)
                + ("looped_lstm",) * (mask == -1))
        values = {"model.n_last_tokens": QUICK_MASKS[mask] if quick else mask, "model.n_layer": n_layer,
                  "model.use_lstm_layer": lstm}
        expected += [({**values, "training.seed": seed}, tags) for seed in (0, 1, 2)]
    assert trial_rows(space) == expected
    assert [h.name for h in space.hypotheses] == list(ALL_THREE)
    for hypothesis in space.hypotheses:  # each as its own file declares it
        assert load_space(hypothesis.name, quick=quick).hypotheses == (hypothesis,)


def test_an_include_is_its_hypotheses_written_out(tmp_path):
    """The included files' hypotheses, copied into one file with the included quick grid: the same trials and the
    same record, so an experiment started from either resumes from the other."""
    written_out = yaml.safe_load((SPACES_DIR / "hypotheses.yaml").read_text())
    files = [yaml.safe_load((SPACES_DIR / name).read_text()) for name in written_out.pop("include")]
    written_out |= {"base": str(SPACES_DIR / written_out["base"]),
                    "hypotheses": [h for f in files for h in f["hypotheses"]]}
    written_out["quick"] |= {"base": str(SPACES_DIR / written_out["quick"]["base"]),
                             "grid": {k: v for f in files for k, v in f["quick"].get("grid", {}).items()}}
    path = tmp_path / "hypotheses.yaml"
    path.write_text(yaml.safe_dump(written_out))
    for quick in (False, True):
        ours, theirs = (space_record(load_space(p, quick=quick), quick).model_dump(exclude={"source"})
                        for p in (SPACES_DIR / "hypotheses.yaml", path))
        assert ours == theirs and len(ours["trials"]) == 30


def write_include(tmp_path, name, hypotheses=None, **top) -> Path:
    """A space file `name` in tmp_path on the table's base, its `hypotheses` given as {name: grid} (none if None)."""
    own = {"hypotheses": [{"name": n, "grid": grid} for n, grid in hypotheses.items()]} if hypotheses else {}
    return write_space(tmp_path, yaml.safe_dump({"base": BASE, **own, **top}, sort_keys=False), name)


def test_an_included_files_hypotheses_come_first_with_its_quick_grid(tmp_path):
    write_include(tmp_path, "layers.yaml", {"layers": {"model.n_layer": [1, 2]}}, seeds=[5, 6],
                  quick={"grid": {"model.n_layer": [3]}, "seeds": [7]})
    path = write_include(tmp_path, "space.yaml", {"masks": {"model.n_last_tokens": [4, -1]}}, include=["layers.yaml"],
                         seeds=[0], quick={"base": {"training.train_steps": 10}})
    assert trial_rows(load_space(path)) == [
        ({"model.n_last_tokens": -1, "model.n_layer": 1, "training.seed": 0}, ("layers", "masks")),
        ({"model.n_last_tokens": -1, "model.n_layer": 2, "training.seed": 0}, ("layers",)),
        ({"model.n_last_tokens": 4, "model.n_layer": 1, "training.seed": 0}, ("masks",))]
    # the included file's quick grid goes with its hypotheses; its seeds are for its own runs
    quick = load_space(path, quick=True)
    assert {t.values["model.n_layer"] for t in quick.trials if "layers" in t.hypotheses} == {3}
    assert {t.values["training.seed"] for t in quick.trials} == {0} and quick.base["training"]["train_steps"] == 10
    # the including file's own quick grid goes over the included one's
    path = write_include(tmp_path, "space.yaml", include=["layers.yaml"],
                         quick={"grid": {"model.n_layer": [4]}})
    assert [t.values for t in load_space(path, quick=True).trials] == [{"model.n_layer": 4}]
    # a --set of a key an included hypothesis sweeps is refused as for the space's own
    with pytest.raises(SpaceError, match=r"--set model.n_layer: .* sweeps this key"):
        load_space(path, overrides={"model.n_layer": 2})


def test_includes_nest(tmp_path):
    write_include(tmp_path, "inner/layers.yaml", {"layers": {"model.n_layer": [1, 2]}}, base="../base.yaml")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    write_include(tmp_path, "middle.yaml", {"masks": {"model.n_last_tokens": [4, -1]}}, base="base.yaml",
                  include=["inner/layers.yaml"])
    path = write_include(tmp_path, "space.yaml", include=["middle.yaml"])
    assert [h.name for h in load_space(path).hypotheses] == ["layers", "masks"]


OTHER = {"other": {"model.n_layer": [1, 2]}}
BAD_INCLUDES = [
    pytest.param({}, {"include": ["nope.yaml"]},
                 ["space.yaml: include[0]: no such file", "nope.yaml", "expected the path of a space file, relative "
                  "to the including file's folder"], id="missing-file"),
    pytest.param({}, {"include": ["space.yaml"]}, ["space.yaml: include[0]: cycle through", "a space may not include "
                                                   "itself"], id="includes-itself"),
    pytest.param({"include": ["space.yaml"]}, {"include": ["other.yaml"]},
                 ["other.yaml: include[0]: cycle through", "space.yaml -> ", "other.yaml -> ", "includes it"],
                 id="cycle"),
    pytest.param({}, {"include": ["other.yaml", "./other.yaml"]},
                 ["space.yaml: include[1]: ", "other.yaml is included already, by ", "include[0]",
                  "include each file once"], id="included-twice"),
    pytest.param({}, {"include": ["other.yaml"], "hypotheses": [{"name": "other", "grid": {"model.n_layer": [3]}}]},
                 ["space.yaml: hypotheses[0].name: must differ from every other hypothesis' name, got 'other' (the "
                  "name of hypotheses[0] in ", "other.yaml)"], id="name-in-both"),
    pytest.param({"base": {**BASE, "training": {**BASE["training"], "train_steps": 41}}}, {"include": ["other.yaml"]},
                 ["space.yaml: include[0]: ", "other.yaml's base sets training.train_steps to 41, this file's to 40; "
                  "an included space must have the including one's base"], id="other-base"),
    pytest.param({}, {"include": "other.yaml"}, ["space.yaml: include: expected a non-empty list of strings, got "
                                                 "'other.yaml'"], id="not-a-list"),
    pytest.param({}, {"include": []}, ["space.yaml: include: expected a non-empty list of strings"], id="empty"),
    pytest.param({}, {"include": [""]}, ["space.yaml: include: must be a non-empty list of space files' paths, "
                                         "relative to this file, got ['']"], id="empty-path"),
    pytest.param({"bogus": 1}, {"include": ["other.yaml"]},
                 ["space.yaml: include[0]: ", "other.yaml: bogus: unknown key; allowed: name, description, base"],
                 id="not-a-space"),
    # an error in an included hypothesis names the file that declares it
    pytest.param({"hypotheses": [{"name": "other", "grid": {"model.n_layr": [1]}}]}, {"include": ["other.yaml"]},
                 ["other.yaml: hypotheses[0].grid.model.n_layr: model.n_layr: unknown key"], id="included-grid"),
]


@pytest.mark.parametrize("other, top, fragments", BAD_INCLUDES)
def test_bad_include(tmp_path, other, top, fragments):
    write_space(tmp_path, {"hypotheses": [{"name": n, "grid": g} for n, g in OTHER.items()], **other}, "other.yaml")
    path = write_space(tmp_path, {"hypotheses": [{"name": "own", "grid": {"model.n_last_tokens": [4, -1]}}], **top})
    with pytest.raises(SpaceError) as err:
        load_space(path)
    message = str(err.value)
    assert "\n" not in message, message
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{missing} not in {message!r}"


def test_the_one_hypothesis_type_round_trips_through_the_record(tmp_path):
    from analysis import verdict
    from trainers import records

    space = load_space("hypotheses")
    assert verdict.Hypothesis is records.Hypothesis and verdict.Trend is records.Trend
    records.write_space_record(tmp_path, space_record(space, False))
    read = records.read_space_record(tmp_path)
    assert read.hypotheses == list(space.hypotheses) and all(type(h) is records.Hypothesis for h in read.hypotheses)
    # the record's layout is the one earlier runners wrote, and their `description` still reads as the question
    saved = yaml.safe_load((tmp_path / records.SPACE_RECORD).read_text())["hypotheses"][0]
    assert list(saved) == ["name", "question", "reference", "expect", "trend"]
    assert records.Hypothesis(**{**saved, "question": "Q?"}) == records.SpaceRecord.model_validate(
        {"hypotheses": [{k: v for k, v in {**saved, "description": "Q?"}.items() if k != "question"}]}).hypotheses[0]
    # the verdict reads the record's hypotheses as they are, and the tables write them positionally
    assert hypotheses_of(read)["information_flow"] == space.hypotheses[0]
    assert space.hypotheses[1] == records.Hypothesis("looped_n_layers", {"model.n_layer": 1}, "better",
                                                     question=space.hypotheses[1].question)
    with pytest.raises(ValueError):
        records.Hypothesis("h", {}, "lower")
