import math

import pytest
import torch
from torch.nn import functional as F

from helpers.models import TINY, prompts, run, tiny
from trainers.config import ModelConfig
from trainers.models import MODEL_FAMILIES, LoopedTransformerModel, TransformerModel, build_model
from trainers.onednn import ONEDNN, Linear

ATOL = 1e-5
RTOL = 1e-4


# tiny models gain nothing from intra-op threads, and on busy shared cores their spin-waits cost 100x
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def manual_prompt(xs, ys):
    B, n, d = xs.shape
    zs = torch.zeros(B, 2 * n, d)
    for i in range(n):
        zs[:, 2 * i] = xs[:, i]
        zs[:, 2 * i + 1, 0] = ys[:, i]
    return zs


def manual_backbone(sd, x, n_layer, n_head):
    """nanoGPT's math written out: explicit causal mask, softmax, tanh-GELU formula."""
    p = lambda name: sd[f"_backbone.transformer.{name}"]
    B, T, C = x.shape
    x = x + p("wpe.weight")[:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(n_layer):
        h = lambda name: p(f"h.{i}.{name}")
        a = F.layer_norm(x, (C,), h("ln_1.weight"), h("ln_1.bias"), 1e-5)
        q, k, v = (a @ h("attn.c_attn.weight").T + h("attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // n_head)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ h("attn.c_proj.weight").T + h("attn.c_proj.bias")
        m = F.layer_norm(x, (C,), h("ln_2.weight"), h("ln_2.bias"), 1e-5)
        m = m @ h("mlp.c_fc.weight").T + h("mlp.c_fc.bias")
        m = 0.5 * m * (1 + torch.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m ** 3)))
        x = x + m @ h("mlp.c_proj.weight").T + h("mlp.c_proj.bias")
    return F.layer_norm(x, (C,), p("ln_f.weight"), p("ln_f.bias"), 1e-5)


def scramble(model):
    """Weights far from their init, so that small mistakes (e.g. the exact GELU) show up in the outputs."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def manual_read(sd, name, x):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
@pytest.mark.parametrize("use_lstm_layer", [False, True])
@pytest.mark.parametrize("n_last_tokens", [-1, 0, 2, 1000])
@pytest.mark.parametrize("n_points", [1, 6])
def test_output_shapes(family, use_lstm_layer, n_last_tokens, n_points):
    model = tiny(family, use_lstm_layer=use_lstm_layer, n_last_tokens=n_last_tokens)
    xs, ys = prompts(n_points=n_points)
    if family == "gpt2":
        assert model(xs, ys).shape == (3, n_points)
    else:
        preds = model(xs, ys, 1, 4)
        assert len(preds) == 3 and all(p.shape == (3, n_points) for p in preds)
        assert all(torch.isfinite(p).all() for p in preds)


def test_gpt2_equals_manual_nanogpt_math():
    model = scramble(tiny("gpt2"))
    xs, ys = prompts()
    sd = model.state_dict()
    h = manual_backbone(sd, manual_read(sd, "_read_in", manual_prompt(xs, ys)), 2, 2)
    expected = manual_read(sd, "_read_out", h)[:, ::2, 0]
    torch.testing.assert_close(model(xs, ys), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("loop_func", ["z=f(x+z)", "z=f(x*z)"])
def test_single_loop_equals_one_backbone_pass(loop_func):
    model = scramble(tiny(loop_func=loop_func))
    xs, ys = prompts()
    sd = model.state_dict()
    h = manual_backbone(sd, manual_read(sd, "_read_in", manual_prompt(xs, ys)), 2, 2)
    (pred,) = model(xs, ys, 0, 1)
    torch.testing.assert_close(pred, manual_read(sd, "_read_out", h)[:, ::2, 0], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("loop_func", ["z=f(x+z)", "z=f(x*z)"])
@pytest.mark.parametrize("n_last_tokens", [-1, 0, 3])
def test_loop_equals_manual_recurrence(loop_func, n_last_tokens):
    model = scramble(tiny(loop_func=loop_func, n_last_tokens=n_last_tokens))
    xs, ys = prompts()
    sd = model.state_dict()
    e = manual_read(sd, "_read_in", manual_prompt(xs, ys))
    T = e.shape[1]
    z = torch.zeros_like(e) if loop_func == "z=f(x+z)" else torch.ones_like(e)
    expected = []
    for _ in range(4):
        if n_last_tokens != -1:
            z[:, :T - n_last_tokens] = 0
        z = manual_backbone(sd, z + e if loop_func == "z=f(x+z)" else z * e, 2, 2)
        expected.append(manual_read(sd, "_read_out", z)[:, ::2, 0])
    preds = model(xs, ys, 1, 4)
    for got, want in zip(preds, expected[1:]):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_backbone_input_keeps_only_last_n_positions_of_the_state():
    model = tiny(n_last_tokens=3)
    xs, ys = prompts(n_points=4)
    fed = []
    model._backbone.register_forward_pre_hook(lambda module, args: fed.append(args[0].detach().clone()))
    e = model._read_in(manual_prompt(xs, ys)).detach()
    model(xs, ys, 0, 3)
    assert len(fed) == 3
    torch.testing.assert_close(fed[0], e)  # z_0 = 0
    for inputs in fed[1:]:
        state = inputs - e
        assert torch.all(state[:, :-3] == 0)
        assert torch.all(state[:, -3:].abs().sum(-1) > 0)


def test_n_last_tokens_zero_feeds_the_prompt_every_iteration():
    model = tiny(n_last_tokens=0)
    xs, ys = prompts()
    preds = model(xs, ys, 0, 3)
    torch.testing.assert_close(preds[0], preds[2], atol=0, rtol=0)


def test_no_grad_iterations_build_no_graph():
    model = tiny()
    xs, ys = prompts()
    needs_grad = []
    model._backbone.register_forward_hook(lambda module, args, out: needs_grad.append(out.requires_grad))
    model(xs, ys, 2, 5)
    assert needs_grad == [False, False, True, True, True]


def test_gradient_flows_only_through_the_loop_window():
    model = tiny()
    xs, ys = prompts()
    sum(p.square().mean() for p in model(xs, ys, 2, 4)).backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    e = model._embed(xs, ys)
    z = torch.zeros_like(e)
    for _ in range(2):
        z = model._backbone(z + e).detach()
    loss = 0
    for _ in range(2):
        z = model._backbone(z + e)
        loss = loss + model._predict(z).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_state_dict_keys_match_the_reference_code():
    layer = ["ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"]
    expected = ["_read_in.weight", "_read_in.bias", "_backbone.transformer.wpe.weight"]
    expected += [f"_backbone.transformer.h.{i}.{m}.{w}"
                 for i in range(2) for m in layer for w in ("weight", "bias")]
    expected += ["_backbone.transformer.ln_f.weight", "_backbone.transformer.ln_f.bias",
                 "_read_out.weight", "_read_out.bias"]
    for family in MODEL_FAMILIES:
        sd = tiny(family).state_dict()
        assert list(sd) == expected
        assert sd["_backbone.transformer.h.0.attn.c_attn.weight"].shape == (48, 16)
        assert sd["_backbone.transformer.wpe.weight"].shape == (2 * 8 + 1, 16)


def test_lstm_state_dict_keys():
    keys = list(tiny(use_lstm_layer=True).state_dict())
    lstm = [k for k in keys if ".lstm." in k]
    assert lstm and all(k.startswith("_backbone.transformer.lstm.") for k in lstm)
    assert not any(".h." in k for k in keys)
    assert "_backbone.transformer.lstm.weight_hh_l1" in keys  # n_layer=2 deep


def test_init_follows_gpt2():
    model = tiny("gpt2", n_embd=64, n_layer=4, n_head=4)
    sd = model.state_dict()
    assert sd["_backbone.transformer.h.0.attn.c_attn.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    proj_std = 0.02 / math.sqrt(2 * 4)
    for name in ("attn.c_proj", "mlp.c_proj"):
        assert sd[f"_backbone.transformer.h.1.{name}.weight"].std().item() == pytest.approx(proj_std, rel=0.1)
        # zero-mean: 4096 or more draws of std 0.007 average within 1e-3 of 0 (9 standard errors)
        assert abs(sd[f"_backbone.transformer.h.1.{name}.weight"].mean().item()) < 1e-3
        assert torch.all(sd[f"_backbone.transformer.h.1.{name}.bias"] == 0)
    assert abs(sd["_backbone.transformer.h.0.attn.c_attn.weight"].mean().item()) < 2e-3
    assert torch.all(sd["_backbone.transformer.ln_f.weight"] == 1)
    assert torch.all(sd["_backbone.transformer.ln_f.bias"] == 0)


def backbone_non_embedding_params(model):
    backbone = model._backbone
    return sum(p.numel() for p in backbone.parameters()) - backbone.transformer.wpe.weight.numel()


def test_parameter_counts_match_the_paper():
    paper = dict(n_embd=256, n_head=8, n_dims=20, n_positions=101)
    looped = build_model({"family": "gpt2_loop", "n_layer": 1, **paper})
    # the paper quotes nanoGPT's count: backbone parameters without the position embedding
    assert backbone_non_embedding_params(looped) == 790_272
    assert backbone_non_embedding_params(looped) == pytest.approx(0.79e6, rel=0.05)
    assert sum(p.numel() for p in looped.parameters()) == 847_873
    deep = build_model({"family": "gpt2", "n_layer": 12, **paper})
    assert backbone_non_embedding_params(deep) == pytest.approx(9.48e6, rel=0.05)


@pytest.mark.parametrize("family", sorted(MODEL_FAMILIES))
@pytest.mark.parametrize("use_lstm_layer", [False, True])
@pytest.mark.parametrize("n_last_tokens", [-1, 4])
def test_later_tokens_do_not_change_earlier_predictions(family, use_lstm_layer, n_last_tokens):
    model = tiny(family, use_lstm_layer=use_lstm_layer, n_last_tokens=n_last_tokens)
    xs, ys = prompts()
    xs2, ys2 = xs.clone(), ys.clone()
    xs2[:, -1] += 1.0
    ys2[:, -2:] += 1.0
    before, after = run(model, xs, ys, 1, 3), run(model, xs2, ys2, 1, 3)
    torch.testing.assert_close(after[:, :-1], before[:, :-1], atol=ATOL, rtol=0)
    assert not torch.allclose(after[:, -1], before[:, -1], atol=ATOL)


def test_init_is_deterministic_under_manual_seed():
    a, b, c = tiny(seed=3), tiny(seed=3), tiny(seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.state_dict()["_read_in.weight"], c.state_dict()["_read_in.weight"])


@pytest.mark.parametrize("cls", [TransformerModel, LoopedTransformerModel])
def test_constructor_defaults_are_the_plain_additive_model(cls):
    model = cls(ModelConfig(**TINY))
    assert "h" in model._backbone.transformer and "lstm" not in model._backbone.transformer
    assert model.config.loop_func == "z=f(x+z)" and model.config.n_last_tokens == -1


def test_build_model_takes_defaults_and_objects():
    model = build_model({"family": "gpt2_loop"})
    assert isinstance(model, LoopedTransformerModel)
    # the defaults are ModelConfig's: the research's looped 1-layer model
    assert len(model._backbone.transformer.h) == ModelConfig().n_layer == 1 and model.config.n_last_tokens == -1
    assert model._read_in.in_features == 20 and model._read_in.out_features == 256
    assert model._backbone.transformer.wpe.num_embeddings == 203
    config = ModelConfig(family="gpt2", **TINY, use_lstm_layer=True)
    model = build_model(config)
    assert type(model) is TransformerModel and "lstm" in model._backbone.transformer and model.config is config


def test_a_dict_and_its_model_config_build_the_same_model():
    section = {"family": "gpt2_loop", **TINY, "n_last_tokens": 3, "loop_func": "z=f(x*z)"}
    torch.manual_seed(0)
    from_dict = build_model(section)
    torch.manual_seed(0)
    from_config = build_model(ModelConfig(**section))
    assert from_dict.config == from_config.config
    for (name, a), b in zip(from_dict.state_dict().items(), from_config.state_dict().values()):
        assert torch.equal(a, b), name


# Computed before the modules took a ModelConfig (each took its own keyword arguments): the same seed must
# still draw the same weights in the same order and the same math must give the same predictions.
# (family, overrides) -> (sum of the predictions of prompts(), sum of every weight, the first two predictions);
# the looped models' predictions are those of iterations 2 to 4 of model(xs, ys, 1, 4).
BEFORE_MODEL_CONFIG = [
    ("gpt2", {}, 1.8400454819202423, 80.23576438133296, [-0.0860794186592102, 0.6157772541046143]),
    ("gpt2_loop", {}, 5.520830944180489, 80.23576438133296, [-0.0860874354839325, 0.6157893538475037]),
    ("gpt2_loop", {"use_lstm_layer": True}, -2.266636148095131, 30.5270108198838,
     [-0.010778740048408508, -0.07168204337358475]),
    ("gpt2", {"use_lstm_layer": True}, 6.923406571149826, 30.5270108198838, [0.3950018584728241, 0.4099481403827667]),
    ("gpt2_loop", {"n_last_tokens": 3}, 5.520310431718826, 80.23576438133296,
     [-0.0860794186592102, 0.6157772541046143]),
    ("gpt2_loop", {"loop_func": "z=f(x*z)"}, -5.63395582139492, 80.23576438133296,
     [-0.778383731842041, -0.37804821133613586]),
]


@pytest.mark.parametrize("family, overrides, prediction_sum, weight_sum, first", BEFORE_MODEL_CONFIG)
def test_models_from_model_config_compute_what_they_did_before(family, overrides, prediction_sum, weight_sum, first):
    model = tiny(family, seed=7, **overrides)
    xs, ys = prompts()
    with torch.no_grad():
        predictions = model(xs, ys) if family == "gpt2" else torch.stack(model(xs, ys, 1, 4))
    weights = sum(w.double().sum() for w in model.state_dict().values())
    assert weights.item() == pytest.approx(weight_sum, rel=1e-9)
    assert predictions.double().sum().item() == pytest.approx(prediction_sum, abs=1e-4)
    assert predictions.flatten()[:2].tolist() == pytest.approx(first, abs=ATOL)


@pytest.mark.parametrize("overrides, match", [
    ({"family": "gpt3"}, "family: must be one of gpt2, gpt2_loop, got 'gpt3'"),
    ({"family": None}, "family: must be one of gpt2, gpt2_loop, got None"),
    ({"loop_func": "z=f(z)"}, "loop_func: must be one of z=f\\(x\\+z\\), z=f\\(x\\*z\\)"),
    ({"n_last_tokens": -2}, "n_last_tokens: must be -1 \\(all tokens\\) or a count >= 0, got -2"),
    ({"n_head": 3}, "n_head: must be a positive divisor of n_embd=16, got 3"),
    ({"pred_type": "classification"}, "pred_type: must be one of regression"),
    ({"n_layers": 2}, "n_layers: unknown key"),
])
def test_build_model_rejects_bad_settings(overrides, match):
    with pytest.raises(ValueError, match=f"^model section: {match}") as err:
        build_model({"family": "gpt2_loop", **TINY, **overrides})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("n_loop_start, n_loops", [(0, 0), (3, 3), (4, 2), (-1, 2)])
def test_loop_window_must_be_non_empty(n_loop_start, n_loops):
    xs, ys = prompts()
    with pytest.raises(ValueError, match="n_loop_start"):
        tiny()(xs, ys, n_loop_start, n_loops)


def test_prompt_longer_than_the_positions_is_refused():
    xs, ys = prompts(n_points=9)
    with pytest.raises(ValueError, match="positions"):
        tiny("gpt2")(xs, ys)


@pytest.mark.slow  # torch.compile's import takes 2 s, though nothing compiles
def test_compile_backbone_keeps_parameter_names():
    """Compilation is lazy (nothing compiles here) and in place: checkpoints keep the reference's keys."""
    model = tiny()
    keys = list(model.state_dict())
    assert model.compile_backbone() is model
    assert list(model.state_dict()) == keys and model._backbone._compiled_call_impl is not None


@pytest.mark.skipif(not ONEDNN, reason="this torch has no oneDNN")
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_f_linear_forward_and_backward(bias):
    torch.manual_seed(0)
    layer = Linear(24, 40, bias=bias)
    assert layer.onednn
    x = torch.randn(3, 7, 24, requires_grad=True)
    grad = torch.randn(3, 7, 40)
    out = layer(x)
    out.backward(grad)
    got = (out, x.grad, layer.weight.grad) + ((layer.bias.grad,) if bias else ())
    x.grad = None
    layer.zero_grad()
    ref = F.linear(x, layer.weight, layer.bias)
    ref.backward(grad)
    want = (ref, x.grad, layer.weight.grad) + ((layer.bias.grad,) if bias else ())
    assert all(a.shape == b.shape and torch.allclose(a, b, rtol=RTOL, atol=ATOL) for a, b in zip(got, want))
    with torch.no_grad():
        assert torch.allclose(layer(x), ref, rtol=RTOL, atol=ATOL)


def test_onednn_off_autocast_and_other_dtypes_take_f_linear():
    torch.manual_seed(0)
    layer = Linear(8, 4)
    x = torch.randn(2, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    assert layer.double()(x.double()).dtype == torch.float64
    model = tiny().use_onednn(False)
    assert not any(m.onednn for m in model.modules() if isinstance(m, Linear))
    layer = model._backbone.transformer.h[0].mlp.c_fc
    x = torch.randn(2, 3, 16)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_onednn_model_agrees_with_the_f_linear_model():
    xs, ys = prompts()
    fast, plain = scramble(tiny()), scramble(tiny()).use_onednn(False)
    out_fast, out_plain = fast(xs, ys, 1, 3), plain(xs, ys, 1, 3)
    assert all(torch.allclose(a, b, rtol=RTOL, atol=ATOL) for a, b in zip(out_fast, out_plain))
