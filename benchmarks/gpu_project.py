"""What `python -m benchmarks.gpu` measures (the variants, the speed modes) and the research study's projected time
on the measured device, from its speed and packing tables."""
from __future__ import annotations

from trainers.config import Config
from trainers.curriculum import final_state
from trainers.flops import step_flops, training_flops
from trainers.records import variant_label
from tune_looped.gpus import gpu_share, trial_memory

# the measured variants; the study's others are timed by them (`reference_of`)
VARIANTS = {variant_label(values): values for values in (
    {"model.n_layer": 1, "model.use_lstm_layer": False}, {"model.n_layer": 3, "model.use_lstm_layer": False},
    {"model.n_layer": 1, "model.use_lstm_layer": True})}
# a speed mode: its config keys and whether TF32 is on (fp32 products and cuDNN)
MODES = {
    "fp32": ({}, False),
    "TF32": ({}, True),
    "bf16": ({"training.precision": "bf16"}, False),
    "CUDA graphs": ({"training.cuda_graphs": True}, False),
    "CUDA graphs bf16": ({"training.cuda_graphs": True, "training.precision": "bf16"}, False),
    "compile": ({"training.compile": True}, False),
}
# the correctness checks each mode's results stand on; TF32 and compile have none
NEEDS = {"fp32": ("fp32",), "bf16": ("bf16",), "CUDA graphs": ("CUDA graphs",),
         "CUDA graphs bf16": ("CUDA graphs", "bf16")}


def reference_of(config: Config) -> str:
    """The measured variant whose steps time a trial's: its family's, of the nearest depth not above its own
    (a mask costs nothing, L=2 is timed by L=1, every LSTM by L=1 LSTM)."""
    if config.model.use_lstm_layer:
        return "L=1 LSTM"
    return "L=3" if config.model.n_layer >= 3 else "L=1"


def step_model(first: tuple[float, float], final: tuple[float, float]) -> tuple[float, float]:
    """(c, slope): a step's seconds as c + slope x its FLOPs, through (FLOPs, seconds) at the curriculum's first and
    final states: a fixed cost (kernel launches, Python) and the products. Neither is negative: a final state no
    slower than the first makes every step cost the final's time, a negative fixed cost makes steps proportional."""
    (f0, t0), (f1, t1) = first, final
    slope = max(0.0, (t1 - t0) / (f1 - f0)) if f1 > f0 else 0.0
    c = t1 - slope * f1
    return (c, slope) if c >= 0 else (0.0, t1 / f1)


def fits(measured: list[dict], refs: dict[str, Config], mode: str) -> dict[str, tuple[float, float]] | None:
    """Each variant's step model in `mode`, or None unless all of them were timed at both states."""
    out = {}
    for label, config in refs.items():
        points = {m["curriculum"]: (step_flops(config, m["state"]).total, m["seconds"]) for m in measured
                  if m["variant"] == label and m["mode"] == mode and "seconds" in m}
        if set(points) != {"first", "final"}:
            return None
        out[label] = step_model(points["first"], points["final"])
    return out


def trial_seconds(config: Config, refs: dict[str, Config], models: dict[str, tuple[float, float]]) -> float:
    """The trial's training time: its reference variant's over the same curriculum, times their FLOPs' ratio."""
    label = reference_of(config)
    ref, (c, slope) = refs[label], models[label]
    final = final_state(config.training.curriculum)
    ratio = step_flops(config, final).total / step_flops(ref, final).total
    return ratio * (c * config.training.train_steps + slope * training_flops(ref))


def packed_seconds(durations: list[float], slots: int, gain: float) -> float:
    """The study's wall time with `slots` trials at once, each at gain/slots of its speed alone: longest first onto
    the slot that frees first, as Tune starts the runner's trials (most FLOPs first) whenever a slot frees."""
    loads = [0.0] * slots
    for duration in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += duration * slots / gain
    return max(loads)


def best_mode(study: list[Config], refs: dict, measured: list[dict], allowed: list[str]) -> str | None:
    """The allowed mode that trains the study soonest one trial at a time; None if none was timed whole."""
    totals = {mode: sum(trial_seconds(c, refs, models) for c in study)
              for mode in allowed if (models := fits(measured, refs, mode)) is not None}
    return min(totals, key=totals.get) if totals else None


def projection(study: list[Config], refs: dict, measured: list[dict], packing_mode: str | None, rates: dict,
               allowed: list[str], gpu_memory: int) -> tuple[list[dict], list[str]]:
    """One row per mode timed whole: a trial of each measured variant and the study one at a time in hours, and
    for the packing's mode the study packed as well as the measured packings allow (no more trials a GPU than
    `gpu: auto` puts there); and the notes that say how."""
    needed = max(trial_memory(c) for c in study)
    auto = round(1 / gpu_share(needed, gpu_memory))
    rows, best = [], None
    for mode in dict.fromkeys(m["mode"] for m in measured):
        models = fits(measured, refs, mode)
        if models is None:
            continue
        durations = [trial_seconds(c, refs, models) for c in study]
        row = {"mode": mode, "correct": "yes" if mode in allowed else "no",
               **{f"{label} h": trial_seconds(config, refs, models) / 3600 for label, config in refs.items()},
               "study h, one at a time": sum(durations) / 3600}
        if mode == packing_mode and (1, False) in rates:
            options = {(k, mps): packed_seconds(durations, k, rate / rates[1, False])
                       for (k, mps), rate in rates.items() if k <= auto}
            k, mps = min(options, key=options.get)
            row.update({"packed": f"{k} a GPU" + (" + MPS" if mps else ""), "study h, packed": options[k, mps] / 3600})
        rows.append(row)
        if mode in allowed:
            hours = row.get("study h, packed", row["study h, one at a time"])
            if best is None or hours < best[1]:
                best = (row, hours)
    steps = study[0].training.train_steps
    notes = [
        "A trial's steps take the time of its family's measured variant (L=1 times every mask and L=2, L=3, L=1 "
        "LSTM every LSTM), scaled by their FLOPs; a variant's step time is affine in the step's FLOPs, through "
        "its two measured curriculum states. correct: the mode's correctness checks passed (TF32 and compile "
        "have none).",
        f"`gpu: auto` puts {auto} trial(s) on a GPU of {gpu_memory / 2**30:.0f} GiB (the largest trial needs "
        f"{needed / 2**30:.1f} GiB by its estimate): packings up to that many count.",
    ]
    if best is not None:
        row, hours = best
        notes.append(f"Best setting: {row['mode']}, {row.get('packed', 'one trial at a time')}: the study's "
                     f"{len(study)} trials of {steps} steps in {hours:.1f} h.")
    return rows, notes
