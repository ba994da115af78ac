"""Config loading: the research's files load unchanged; every bad input is one line naming file and key."""
import re
import typing
from pathlib import Path

import pytest
import yaml

from trainers.config import (
    Config, ConfigError, ModelFamily, TaskName, config_from_dict, config_to_dict, load_config, parse_override_args,
)
from trainers.curriculum import curriculum_at, final_state
from trainers.schema import Section

DATA = Path(__file__).parent / "data"


def test_digest_config_loads_unchanged():
    cfg = load_config(DATA / "digest_base_loop.yaml")
    assert cfg.model.family == "gpt2_loop" and cfg.model.n_embd == 256 and cfg.model.n_last_tokens == -1
    assert cfg.training.curriculum.points.end == 41 and cfg.training.curriculum.loops.inc == 2
    assert cfg.training.learning_rate == pytest.approx(1e-4) and cfg.training.keep_every_steps == 20000


def test_inherit_merges_in_order_and_key_is_only_a_secret(tmp_path):
    (tmp_path / "key.yaml").write_text("wandb:\n  key: s3cr3t-key\n  project: other\n")
    top = tmp_path / "top.yaml"
    top.write_text(f"inherit:\n  - {DATA / 'digest_base_loop.yaml'}\n  - key.yaml\nmodel:\n  n_layer: 3\n")
    secrets = {}
    cfg = load_config(top, secrets=secrets)
    assert cfg.model.n_layer == 3 and cfg.model.n_embd == 256 and cfg.wandb.project == "other"
    assert secrets == {"wandb.key": "s3cr3t-key"}
    assert "s3cr3t-key" not in repr(cfg) and "s3cr3t-key" not in yaml.safe_dump(config_to_dict(cfg))


def test_placeholder_key_is_not_a_secret():
    secrets = {}
    load_config(DATA / "digest_wandb.yaml", secrets=secrets)
    assert secrets == {}


def test_research_command_line_overrides():
    argv = ["--model.n_layer", "2", "--training.curriculum.loops.start", "15", "--training.curriculum.loops.end",
            "30", "--training.n_loop_window", "15", "--wandb.name", "LR_loop_L1_ends{30}_T{15}", "--gpu.n_gpu", "0",
            "--model.use_lstm_layer", "true", "--training.learning_rate", "3e-4"]
    overrides = parse_override_args(argv)
    cfg = load_config(DATA / "digest_base_loop.yaml", overrides)
    assert cfg.model.n_layer == 2 and cfg.model.use_lstm_layer is True
    assert cfg.wandb.name == "LR_loop_L1_ends{30}_T{15}" and cfg.gpu.n_gpu == 0
    assert cfg.training.learning_rate == pytest.approx(3e-4)


def test_reference_keys_are_accepted_and_ignored_with_a_warning(tiny_raw):
    tiny_raw["training"].update(use_ctx=True, train_size=10)
    tiny_raw.update(debug_mode=False, gpu={"cuda": False, "n_gpu": 0})
    tiny_raw["model"].update(pred_type="regression", loop_func="z=f(x*z)", pretrained_path=None)
    with pytest.warns(UserWarning, match="training.use_ctx"):
        cfg = config_from_dict(tiny_raw, "t.yaml")
    assert cfg.model.loop_func == "z=f(x*z)" and cfg.gpu.cuda is False


def test_round_trip_through_dict(tiny_raw):
    cfg = config_from_dict(tiny_raw)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def _set(raw, dotted, value):
    *path, last = dotted.split(".")
    for part in path:
        raw = raw.setdefault(part, {})
    raw[last] = value


BAD = [
    ("model.n_layr", 2, "model.n_layr: unknown key"),
    ("model.n_layer", "two", "model.n_layer: expected an integer"),
    ("model.n_layer", 1.5, "model.n_layer: expected an integer"),
    ("model.use_lstm_layer", 1, "model.use_lstm_layer: expected true or false"),
    ("training.learning_rate", "fast", "training.learning_rate: expected a number"),
    ("model.n_head", 5, "model.n_head: must be a positive divisor of n_embd=32"),
    ("model.family", "gpt3", "model.family: must be one of gpt2, gpt2_loop"),
    ("training.task_name", "sorting", "training.task_name: must be one of linear_regression"),
    ("training.curriculum.dims.end", 6, "training.curriculum.dims.end: must be at most model.n_dims=5"),
    ("training.curriculum.points.end", 12, "training.curriculum.points.end: must be at most model.n_positions=11"),
    ("training.train_steps", 0, "training.train_steps: must be a positive integer"),
    ("training.save_every_steps", -5, "training.save_every_steps: must be a positive integer"),
    ("training.curriculum.loops.interval", 0, "training.curriculum.loops.interval: must be a positive integer"),
    ("training.curriculum.points.start", 20, "training.curriculum.points.end: must be at least start=20"),
    ("model.n_last_tokens", -2, "model.n_last_tokens: must be -1"),
    ("training.precision", "fp16", "training.precision: must be one of fp32, bf16"),
    ("model.loop_func", "z=f(z)", "model.loop_func: must be one of"),
    ("wandb.log_every_steps", 0, "wandb.log_every_steps: must be a positive integer"),
    ("training.curriculum", 3, "training.curriculum: expected a mapping"),
    ("training.curriculum.dims.inc", -1, "training.curriculum.dims.inc: must be an integer >= 0"),
    ("training.compile", "yes", "training.compile: expected true or false"),
    ("training.cuda_graphs", 1, "training.cuda_graphs: expected true or false"),
    ("training.onednn_linear", "on", "training.onednn_linear: expected true or false"),
    # a value torch or Adam would take, to train on nan from the first step
    ("training.learning_rate", float("inf"), "training.learning_rate: must be a finite number > 0, got inf"),
    ("training.learning_rate", "nan", "training.learning_rate: must be a finite number > 0, got 'nan'"),
    ("training.weight_decay", float("inf"), "training.weight_decay: must be a finite number >= 0, got inf"),
    # torch.manual_seed takes at most 2**64 - 1; a negative seed is another seed's alias
    ("training.seed", 2**64, "training.seed: must be an integer from 0 to 2**64 - 1"),
    ("training.seed", -1, "training.seed: must be an integer from 0 to 2**64 - 1"),
    # wandb.name names the single run's folder under out_dir
    ("wandb.name", "../../x", "wandb.name: must be a folder name: 1 to 200 characters, no / or \\"),
    ("wandb.name", "/tmp/x", "wandb.name: must be a folder name"),
]


@pytest.mark.parametrize("dotted,value,message", BAD, ids=[b[0] + "=" + repr(b[1]) for b in BAD])
def test_bad_values_name_file_and_key(tmp_path, tiny_raw, dotted, value, message):
    _set(tiny_raw, dotted, value)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


BAD_FILES = [
    ("model: [1, 2\n", "not valid YAML"),
    ("- a\n- b\n", "top level: expected a mapping"),
    ("model: 3\n", "model: expected a mapping"),
    ("inherit: [missing.yaml]\n", "cannot read config file"),
    ("inherit: [bad.yaml]\n", "inherit: cycle"),
]


@pytest.mark.parametrize("text,message", BAD_FILES)
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("step,expected", [(0, (10, 11, 15)), (499, (10, 11, 15)), (500, (10, 11, 17)),
                                           (1000, (10, 13, 19)), (3999, (10, 17, 29)), (4000, (10, 19, 30)),
                                           (20000, (10, 41, 30)), (10**6, (10, 41, 30))])
def test_curriculum_is_a_pure_function_of_the_step(step, expected):
    curriculum = load_config(DATA / "digest_base_loop.yaml").training.curriculum
    state = curriculum_at(curriculum, step)
    assert (state.n_dims, state.n_points, state.n_loops) == expected
    assert final_state(curriculum) == curriculum_at(curriculum, 10**9)


def test_the_largest_seed_torch_takes_is_valid():
    assert config_from_dict({"training": {"seed": 2**64 - 1}}).training.seed == 2**64 - 1


def test_defaults_are_valid():
    assert config_from_dict({}) == Config()


def test_performance_option_defaults_and_overrides(tiny_config_file):
    assert Config().training.onednn_linear == "auto"
    assert Config().training.compile is False and Config().training.cuda_graphs is False
    cfg = load_config(tiny_config_file, parse_override_args(["--training.compile", "true",
                                                             "--training.cuda_graphs", "true"]))
    assert cfg.training.compile is True and cfg.training.cuda_graphs is True


@pytest.mark.slow
def test_cli_trains_with_key_equals_value(tmp_path, tiny_config_file, commands):
    done = commands.run(["-m", "trainers.train", "--config", str(tiny_config_file), "--model.n_layer=2",
                         "--training.train_steps=3", "--wandb.name=eq", "--out_dir", str(tmp_path / "runs")],
                        cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = yaml.safe_load((tmp_path / "runs" / "eq" / "config.yaml").read_text())
    assert saved["model"]["n_layer"] == 2 and saved["training"]["train_steps"] == 3


@pytest.mark.parametrize("text, message", [
    ("model:\n  n_layer: 1\n  n_embd: 32\n  n_layer: 2\n", "model.n_layer: key given twice (lines 2 and 4)"),
    ("training: {}\ntraining: {seed: 1}\n", "training: key given twice (lines 1 and 2)"),
    ("training:\n  curriculum:\n    dims: {start: 1, start: 2}\n", "training.curriculum.dims.start: key given twice (line 3)"),
], ids=["nested", "section", "flow-mapping"])
def test_a_key_given_twice_is_an_error(tmp_path, text, message):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}; give it once"


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("x: &shared {n_layer: 2, n_embd: 32}\nmodel:\n  <<: *shared\n  n_layer: 3\n")
    with pytest.raises(ConfigError, match="x: unknown key"):
        load_config(path)
    path.write_text("model: &m {n_layer: 2}\n")
    assert load_config(path).model.n_layer == 2


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", b"model:\n  n_layer: \xe9\n"],
                         ids=["binary", "latin-1"])
def test_an_undecodable_file_is_one_line(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: not a text file (byte ") and "\n" not in str(err.value)


def test_registries_are_the_schemas_names():
    """config.py imports neither registry, so the names it allows are checked against them here."""
    from trainers.models import MODEL_FAMILIES
    from trainers.tasks import TASKS

    assert list(MODEL_FAMILIES) == list(typing.get_args(ModelFamily))
    assert list(TASKS) == list(typing.get_args(TaskName))


def _leaf_keys(section, prefix=""):
    for name, field in section.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            yield from _leaf_keys(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


SECTIONS = ("model", "training", "wandb", "gpu")


def documented_keys(reference: str) -> set[str]:
    """The dotted keys docs/CONFIG.md's "Keys" section names: each table row's first cell, and the paragraph of the
    research's code's other keys. A name without its section (`n_layer` after `model.n_embd`) is of the section of
    the name before it; `curriculum.{dims,points,loops}` names three."""
    keys = reference.split("## Keys", 1)[1].split("\n## ", 1)[0]
    rows = [row.split("|")[1] for row in keys.splitlines() if row.startswith("| `")]
    others = keys.split("The research's code's other keys", 1)[1].split("\n\n", 1)[0]
    documented = set()
    for text in (*rows, others):
        section = ""
        for name in re.findall(r"`([^`]+)`", text):
            if name.split(".", 1)[0] in SECTIONS:
                section = name.rsplit(".", 1)[0] if "." in name else ""
                full = name
            else:
                full = f"{section}.{name}" if section else name
            braces = re.fullmatch(r"(.*)\{(.*)\}", full)
            documented |= {braces.group(1) + part for part in braces.group(2).split(",")} if braces else {full}
    return documented


def undocumented(reference: str) -> list[str]:
    documented = documented_keys(reference)
    return [key for key in _leaf_keys(Config)
            if not any(key == name or key.startswith(f"{name}.") for name in documented)]


def test_every_config_key_is_in_the_reference():
    """docs/CONFIG.md's key table is written by hand: a key added to the schema must be added there too, as a key
    of the table (or of the research's code's ignored keys), not merely as a word somewhere in the prose."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "CONFIG.md").read_text()
    assert not undocumented(text), f"not in docs/CONFIG.md's Keys: {undocumented(text)}"
    # a key named only in prose, or in another section, is not documented
    without_seed = "\n".join(line for line in text.splitlines() if not line.startswith("| `training.seed`"))
    assert undocumented(without_seed + "\n\ntraining.seed is the seed (`seed`)") == ["training.seed"]
    assert "gpu.n_gpu" in documented_keys(text) and "training.curriculum.loops" in documented_keys(text)
