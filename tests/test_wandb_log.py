"""W&B: the run's name in the research's style, and what reaches `wandb.init` (project, group, tags, mode, config,
name). The key reaching the trial workers is checked on a real sweep in test_runner.py."""
import copy
import os

import pytest
import wandb
import yaml

from trainers.config import Config, config_from_dict, config_to_dict
from trainers.dotted import set_dotted
from trainers.records import wandb_run_name
from trainers.wandb_log import WandbRun, flat_config, key_available, resolve_mode

BASE = {
    "model": {"family": "gpt2_loop", "n_layer": 1},
    "training": {"task_name": "linear_regression", "n_loop_window": 15, "seed": 42,
                 "curriculum": {"loops": {"start": 15, "end": 30, "inc": 2, "interval": 500}}},
}


def config_of(**dotted) -> Config:
    raw = copy.deepcopy(BASE)
    for key, value in dotted.items():
        raw = set_dotted(raw, key.replace("__", "."), value)
    return config_from_dict(raw)


@pytest.mark.parametrize("overrides, values, name", [
    ({}, {}, "LR_loop_L1_ends{30}_T{15}"),
    ({"model__n_layer": 2}, {"model.n_layer": 2}, "LR_loop_L2_ends{30}_T{15}"),
    ({"training__n_loop_window": 5, "training__curriculum__loops__end": 20}, {}, "LR_loop_L1_ends{20}_T{5}"),
    ({"model__use_lstm_layer": True}, {}, "LR_loop_L1_LSTM_ends{30}_T{15}"),
    ({"model__n_last_tokens": 0}, {}, "LR_loop_L1_N0_ends{30}_T{15}"),
    ({"model__n_last_tokens": 7, "model__use_lstm_layer": True}, {}, "LR_loop_L1_LSTM_N7_ends{30}_T{15}"),
    ({"training__seed": 3}, {"training.seed": 3}, "LR_loop_L1_ends{30}_T{15}_seed3"),
    ({"training__seed": 3}, {}, "LR_loop_L1_ends{30}_T{15}"),  # a fixed seed is not a varying key
    ({"model__family": "gpt2", "model__n_layer": 12}, {}, "LR_tf_L12"),
    ({"model__family": "gpt2", "model__use_lstm_layer": True, "model__n_last_tokens": 4},
     {"training.seed": 42}, "LR_tf_L1_LSTM_N4_seed42"),
    ({"training__task_name": "noisy_linear_regression"}, {}, "NLR_loop_L1_ends{30}_T{15}"),
    ({"training__task_name": "sparse_linear_regression"}, {}, "SLR_loop_L1_ends{30}_T{15}"),
    ({"training__task_name": "relu_2nn_regression"}, {}, "R2NN_loop_L1_ends{30}_T{15}"),
    ({"training__task_name": "decision_tree", "model__family": "gpt2"}, {}, "DT_tf_L1"),
])
def test_run_name(overrides, values, name):
    assert wandb_run_name(config_of(**overrides), values) == name


class Capture:
    """Stands in for `wandb.init`: keeps its arguments and returns a run that records what is logged."""

    def __init__(self):
        self.kwargs, self.logged, self.finished = None, [], False

    def __call__(self, **kwargs):
        self.kwargs = kwargs
        return self

    def log(self, row, step=None):
        self.logged.append((row, step))

    def finish(self):
        self.finished = True


@pytest.fixture
def home(monkeypatch, tmp_path):
    """No key in the environment, a netrc or a settings file, and wandb's default server: `auto` means offline.
    wandb keeps its settings and the credentials it found for the process, so they are dropped around each test."""
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_CONFIG_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    wandb.teardown()
    yield tmp_path
    wandb.teardown()


@pytest.fixture
def init(monkeypatch, home):
    """wandb.init captured."""
    capture = Capture()
    monkeypatch.setattr(wandb, "init", capture)
    return capture


def test_wandb_init_gets_the_space_settings_and_the_whole_config(init, tmp_path):
    config = config_of(model__n_layer=2, wandb__project="from_config", wandb__notes="a note")
    settings = {"project": "from_space", "entity": "lab", "group": "hypotheses", "mode": "offline"}
    run = WandbRun(config, {"model.n_layer": 2}, ("information_flow", "looped_n_layers"), settings, str(tmp_path),
                   run_id="ab12c_00003")
    assert {k: init.kwargs[k] for k in ("project", "entity", "group", "name", "notes", "tags", "dir", "mode", "id",
                                        "resume")} == {
        "project": "from_space", "entity": "lab", "group": "hypotheses", "name": "LR_loop_L2_ends{30}_T{15}",
        "notes": "a note", "tags": ["information_flow", "looped_n_layers"], "dir": str(tmp_path), "mode": "offline",
        "id": "ab12c_00003", "resume": "allow"}
    logged_config = init.kwargs["config"]
    assert logged_config["hypotheses"] == ["information_flow", "looped_n_layers"]
    # flat dotted keys: W&B's grouping and parallel-coordinates views offer only top-level keys
    assert logged_config["model.n_layer"] == 2 and logged_config["training.seed"] == 42
    assert logged_config["training.curriculum.loops.end"] == 30
    assert not any(isinstance(v, dict) for v in logged_config.values())
    nested: dict = {}
    for key, value in logged_config.items():
        if key != "hypotheses":
            nested = set_dotted(nested, key, value)
    assert nested == config_to_dict(config)
    # the config survives a round trip through YAML, as W&B stores it
    assert yaml.safe_load(yaml.safe_dump(logged_config)) == logged_config
    run.log({"step": 20, "overall_loss": 0.5})
    run.finish()
    assert init.logged == [({"step": 20, "overall_loss": 0.5}, 20)] and init.finished


def test_wandb_init_falls_back_to_the_config_project_and_name(init, tmp_path):
    config = config_of(wandb__project="loop_tf_ablation", wandb__name="my_run")
    WandbRun(config, {}, (), {}, str(tmp_path), run_id="t")
    assert (init.kwargs["project"], init.kwargs["name"], init.kwargs["group"]) == ("loop_tf_ablation", "my_run", None)
    assert init.kwargs["tags"] == [] and init.kwargs["entity"] is None and init.kwargs["mode"] == "offline"


@pytest.mark.parametrize("mode, env_key, netrc, has_key, expected", [
    ("auto", None, False, False, "offline"),
    ("auto", "k" * 40, False, True, "online"),
    ("auto", "", False, False, "offline"),  # an empty variable is no key
    ("auto", None, True, True, "online"),  # `wandb login` wrote a netrc
    ("offline", "k" * 40, True, True, "offline"),
    ("online", None, False, False, "online"),
    ("disabled", "k" * 40, False, True, "disabled"),
], ids=["auto-no-key", "auto-env-key", "auto-empty-env", "auto-netrc", "offline-with-key", "online-without-key",
        "disabled"])
def test_mode_follows_the_key(init, tmp_path, monkeypatch, mode, env_key, netrc, has_key, expected):
    if env_key is not None:
        monkeypatch.setenv("WANDB_API_KEY", env_key)
    if netrc:
        (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "p" * 40 + "\n")
        (tmp_path / ".netrc").chmod(0o600)
    assert key_available() == has_key
    assert resolve_mode(mode) == expected
    WandbRun(config_of(), {}, ("e",), {"mode": mode}, str(tmp_path), run_id="t")
    assert init.kwargs["mode"] == expected


def test_settings_without_a_mode_mean_auto(init, tmp_path, monkeypatch):
    WandbRun(config_of(), {}, ("e",), {}, str(tmp_path), run_id="t")
    assert init.kwargs["mode"] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    WandbRun(config_of(), {}, ("e",), {}, str(tmp_path), run_id="t")
    assert init.kwargs["mode"] == "online"


SELF_HOSTED = "https://wandb.example.com"


def write_netrc(home, host: str) -> None:
    (home / ".netrc").write_text(f"machine {host}\n  login user\n  password {'p' * 40}\n")
    (home / ".netrc").chmod(0o600)


@pytest.mark.parametrize("netrc_host, base_url, settings_file, has_key", [
    ("example.com", None, None, False),  # a netrc entry for another host is no key
    ("wandb.example.com", None, None, False),  # a self-hosted server's key, but wandb points at its default
    ("wandb.example.com", SELF_HOSTED, None, True),  # WANDB_BASE_URL names the server whose key the netrc holds
    ("wandb.example.com", None, SELF_HOSTED, True),  # so does the settings file
    ("api.wandb.ai", SELF_HOSTED, None, False),  # the public host's key is not the self-hosted server's
], ids=["other-host", "self-hosted-key-default-server", "base-url", "settings-file", "public-key-self-hosted"])
def test_wandb_decides_what_a_configured_key_means(home, monkeypatch, netrc_host, base_url, settings_file, has_key):
    write_netrc(home, netrc_host)
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    if settings_file:
        (home / ".config" / "wandb").mkdir(parents=True)
        (home / ".config" / "wandb" / "settings").write_text(f"[default]\nbase_url = {settings_file}\n")
    assert key_available() == has_key
    assert resolve_mode("auto") == ("online" if has_key else "offline")


@pytest.mark.parametrize("where", ["environment", "settings file"])
def test_the_wandb_library_sees_the_configured_host(home, monkeypatch, where):
    """A real (offline) run: wandb itself reads the host from WANDB_BASE_URL or its settings file."""
    if where == "environment":
        monkeypatch.setenv("WANDB_BASE_URL", SELF_HOSTED)
    else:
        (home / ".config" / "wandb").mkdir(parents=True)
        (home / ".config" / "wandb" / "settings").write_text(f"[default]\nbase_url = {SELF_HOSTED}\n")
    run = WandbRun(config_of(), {}, ("e",), {"mode": "offline"}, str(home), run_id="host")
    try:
        assert run.run.settings.base_url == SELF_HOSTED
    finally:
        run.finish()


def test_an_offline_retry_replaces_the_earlier_run_and_replays_the_checkpoint_rows(init, tmp_path):
    (tmp_path / "wandb" / "offline-run-20260101_000000-t1").mkdir(parents=True)
    (tmp_path / "wandb" / "offline-run-20260101_000001-t1").mkdir()
    (tmp_path / "wandb" / "offline-run-20260101_000000-t2").mkdir()  # another trial's run stays
    rows = [{"step": 0, "overall_loss": 1.0}, {"step": 10, "overall_loss": 0.5}]
    WandbRun(config_of(), {}, ("e",), {"mode": "offline"}, str(tmp_path), run_id="t1", history=rows)
    assert [p.name for p in (tmp_path / "wandb").iterdir()] == ["offline-run-20260101_000000-t2"]
    assert init.logged == [(rows[0], 0), (rows[1], 10)]


def test_a_trial_does_not_join_a_wandb_service_it_inherited(init, tmp_path, monkeypatch):
    """A killed trial's run stays "in use" in a service it shared: the retry would fail to take the run up."""
    monkeypatch.setenv("WANDB_SERVICE", "2-1234-tcp-localhost-5678")  # the driver's service, passed to its workers
    seen = {}

    def init_seeing_the_service(**kwargs):
        seen["service"] = os.environ.get("WANDB_SERVICE")
        return init(**kwargs)

    monkeypatch.setattr(wandb, "init", init_seeing_the_service)
    WandbRun(config_of(), {}, ("e",), {"mode": "offline"}, str(tmp_path), run_id="t1")
    assert seen == {"service": None} and init.kwargs["id"] == "t1"


def test_an_online_retry_continues_the_run_without_replaying(init, tmp_path):
    WandbRun(config_of(), {}, ("e",), {"mode": "online"}, str(tmp_path), run_id="t1", history=[{"step": 0}])
    assert init.kwargs["id"] == "t1" and init.kwargs["resume"] == "allow" and init.logged == []


def test_flat_config_is_every_leaf_once():
    flat = flat_config(config_of(model__n_last_tokens=3))
    assert flat["model.n_last_tokens"] == 3 and flat["wandb.log_every_steps"] > 0
    assert not any(isinstance(v, dict) for v in flat.values())


@pytest.mark.parametrize("config_wandb, space_wandb, flag, expected", [
    # a config's W&B section is honoured: enabled, mode, project, entity, group
    ({"enabled": True, "mode": "offline", "entity": "lab", "group": "g"}, {}, False,
     {"mode": "offline", "project": "loop_tf", "entity": "lab", "group": "g"}),
    # the space's block over the config's, the flag over both
    ({"enabled": True, "entity": "lab"}, {"entity": "team", "project": "p"}, False,
     {"mode": "auto", "project": "p", "entity": "team", "group": "tiny"}),
    ({}, {}, True, {"mode": "auto", "project": "loop_tf", "group": "tiny"}),
    ({"enabled": True}, {"enabled": False}, False, None),
    ({}, {}, False, None),
], ids=["config", "space-over-config", "flag", "space-disables", "off"])
def test_the_runner_takes_w_and_b_settings_from_the_config_then_the_space(tmp_path, config_wandb, space_wandb, flag,
                                                                          expected):
    import argparse

    from tune_looped.inputs import wandb_settings
    from tune_looped.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "base": {"wandb": config_wandb}, "wandb": space_wandb,
                                    "hypotheses": [{"name": "h", "grid": {"model.n_layer": [1]}}]}))
    args = argparse.Namespace(wandb=flag, wandb_mode=None)
    assert wandb_settings(load_space(path), args) == expected


@pytest.mark.slow
def test_a_single_run_with_wandb_enabled_logs_offline_to_its_folder(tiny_config_file, tmp_path, monkeypatch):
    from trainers.train import main

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no netrc
    args = ["--config", str(tiny_config_file), "--out_dir", str(tmp_path / "runs"), "--wandb.enabled", "true",
            "--wandb.mode", "offline", "--wandb.group", "g"]
    assert main(args) == 0
    wandb_dir = tmp_path / "runs" / "tiny" / "wandb"
    assert len(list(wandb_dir.glob("offline-run-*"))) == 1
    assert main([*args, "--resume"]) == 0
    # the resumed run is the same W&B run: its id comes from the run's folder
    assert len({p.name.rsplit("-", 1)[-1] for p in wandb_dir.glob("offline-run-*")}) == 1
