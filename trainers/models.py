"""The models of the looped-transformer paper: a GPT-2 backbone (nanoGPT style) run once or in a loop.

Every module takes the `model` section, a ModelConfig, as nanoGPT's take their GPTConfig: a new knob is a
field of ModelConfig read where it acts, not a constructor argument threaded through every class. Parameter
names match the research's code so its checkpoints load with strict=True
(`trainers.checkpoint.load_research_checkpoint`).

A prompt is B sequences of n_points pairs (x, y): xs [B, n_points, n_dims], ys [B, n_points]. The backbone
sees them as T = 2 * n_points tokens of width C = n_embd.
"""
import math
import typing

import torch
import torch.nn as nn
from torch.nn import functional as F

from trainers.config import LoopFunc, ModelConfig
from trainers.onednn import ONEDNN, Linear
from trainers.schema import validate

LOOP_FUNCS = typing.get_args(LoopFunc)
ADDITIVE, MULTIPLICATIVE = LOOP_FUNCS


class CausalSelfAttention(nn.Module):

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)  # fused q, k, v (in that order)
        self.c_proj = Linear(config.n_embd, config.n_embd)
        # a plain int, not the config: the compiled backbone reads it on every call
        self.n_head = config.n_head

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # [B, T, C] -> [B, n_head, T, C // n_head]
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # [B, n_head, T, C // n_head] -> [B, T, C]
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def _init_weights(module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class Backbone(nn.Module):
    """Position embedding, n_layer blocks (or one n_layer-deep LSTM), final LayerNorm; no token embedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C = config.n_embd
        if config.use_lstm_layer:
            layers = dict(lstm=nn.LSTM(C, C, num_layers=config.n_layer, batch_first=True))
        else:
            layers = dict(h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]))
        # every x and every y is one token, plus one spare row as in the research's code
        self.transformer = nn.ModuleDict(dict(
            wpe=nn.Embedding(2 * config.n_positions + 1, C),
            **layers,
            ln_f=nn.LayerNorm(C, eps=1e-5),
        ))
        self.apply(_init_weights)
        # GPT-2 scales the residual projections so the residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def forward(self, inputs_embeds):
        T = inputs_embeds.size(1)
        wpe = self.transformer.wpe
        if T > wpe.num_embeddings:
            raise ValueError(f"sequence of {T} tokens is longer than the {wpe.num_embeddings} positions")
        x = inputs_embeds + wpe.weight[:T]  # [B, T, C] + [T, C]
        if "lstm" in self.transformer:
            x, _ = self.transformer.lstm(x)
        else:
            for block in self.transformer.h:
                x = block(x)
        return self.transformer.ln_f(x)


def _combine(xs, ys):
    """Interleave x_1, y_1, x_2, y_2, ... with each y widened to (y, 0, ..., 0)."""
    B, n_points, n_dims = xs.shape
    ys_wide = F.pad(ys.unsqueeze(-1), (0, n_dims - 1))  # [B, n_points] -> [B, n_points, n_dims]
    # [B, n_points, 2, n_dims] -> [B, 2 * n_points, n_dims]
    return torch.stack((xs, ys_wide), dim=2).view(B, 2 * n_points, n_dims)


class TransformerModel(nn.Module):
    """Family gpt2: one pass of the backbone."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # read-in and read-out keep PyTorch's default init, as in the research's code
        self._read_in = nn.Linear(config.n_dims, config.n_embd)
        self._backbone = Backbone(config)
        self._read_out = nn.Linear(config.n_embd, 1)

    def _embed(self, xs, ys):
        return self._read_in(_combine(xs, ys))  # [B, 2 * n_points, n_dims] -> [B, 2 * n_points, n_embd]

    def _predict(self, z):
        # predictions live at the x tokens: [B, 2 * n_points, n_embd] -> [B, n_points, n_embd] -> [B, n_points]
        return self._read_out(z[:, ::2]).squeeze(-1)

    def forward(self, xs, ys):
        return self._predict(self._backbone(self._embed(xs, ys)))

    def use_onednn(self, enabled: bool = True):
        """Run the transformer blocks' fp32 CPU products on oneDNN (see `Linear`); returns the model."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.onednn = enabled and ONEDNN
        return self

    def compile_backbone(self, **options):
        """torch.compile the backbone in place; parameter names, and so checkpoints, are unchanged.

        Only the backbone: the loop stays in Python, so one graph serves every loop count. The sequence
        length is compiled as a dynamic size, so the curriculum's growing prompts reuse one graph, and the
        kernels do not depend on which length a run (or a resumed run) happened to see first.
        """
        self._backbone.compile(**{"dynamic": True, **options})
        return self


class LoopedTransformerModel(TransformerModel):
    """Family gpt2_loop: z_0 = 0, z_{t+1} = backbone(z_t + e), a prediction read out after every iteration;
    `loop_func` and `n_last_tokens` act here only."""

    def _keep_mask(self, embeds):
        """[1, T, 1] mask that zeroes the state before its last n_last_tokens positions; None keeps all."""
        T, N = embeds.size(1), self.config.n_last_tokens
        if N == -1 or N >= T:
            return None
        positions = torch.arange(T, device=embeds.device)
        return (positions >= T - N).to(embeds.dtype).view(1, T, 1)  # [T] -> [1, T, 1]

    def _step(self, z, embeds, keep):
        if keep is not None:
            z = z * keep
        return self._backbone(z + embeds if self.config.loop_func == ADDITIVE else z * embeds)

    def forward(self, xs, ys, n_loop_start, n_loops):
        if not 0 <= n_loop_start < n_loops:
            raise ValueError(f"need 0 <= n_loop_start < n_loops, got n_loop_start={n_loop_start}, "
                             f"n_loops={n_loops}")
        embeds = self._embed(xs, ys)
        keep = self._keep_mask(embeds)
        # z_0 = 1 for the multiplicative form (as in the research's code) so that the first iteration
        # sees the prompt itself, as z_0 = 0 does for the additive one; zeros would wipe it out for good
        z = torch.zeros_like(embeds) if self.config.loop_func == ADDITIVE else torch.ones_like(embeds)
        # the iterations before the loss window build no graph: memory stays flat in n_loops
        with torch.no_grad():
            for _ in range(n_loop_start):
                z = self._step(z, embeds, keep)
        predictions = []
        for _ in range(n_loop_start, n_loops):
            z = self._step(z, embeds, keep)
            predictions.append(self._predict(z))
        return predictions


MODEL_FAMILIES = {"gpt2": TransformerModel, "gpt2_loop": LoopedTransformerModel}


def build_model(model_config: ModelConfig | dict) -> TransformerModel:
    """The model of a `model` section: a ModelConfig, or a plain dict of one (a checkpoint's, a test's) that
    ModelConfig checks and completes with its defaults, so the schema stays the one owner of both."""
    config = model_config if isinstance(model_config, ModelConfig) else validate(ModelConfig, model_config,
                                                                                   "model section")
    return MODEL_FAMILIES[config.family](config)
