"""`python -m trainers.train --config cfg.yaml [--section.key VALUE ...]`: one run, no Ray.

Accepts the research's own command lines (`--model.n_layer 1 --wandb.name "LR_loop_L1_ends{30}_T{15}"
--gpu.n_gpu 0`). The run lives in `<out_dir>/<wandb.name or config name>/` with its resolved `config.yaml`,
`metrics.jsonl` and `checkpoints/`; `--resume` continues it from its latest checkpoint.

The entry point only: the training loop is `trainers.training`, and no module imports this one (run as
`__main__`, it would execute a second time).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import yaml

from trainers import atomic
from trainers.cli import OneLineArgumentParser, one_line_warnings
from trainers.config import SECRET_KEYS, Config, ConfigError, config_to_dict, load_config, parse_override_args
from trainers.schema import describe_keys
from trainers.table import render

DEFAULT_OUT_DIR = "runs"


def _keys_help() -> str:
    """The config keys, their defaults and what they allow, from the schema: the epilog of `--help`."""
    rows = [[f"--{key}", "-" if default is None else yaml.safe_dump(default).strip().removesuffix("\n..."),
             allowed] for key, default, allowed in describe_keys(Config)]
    rows += [[f"--{key}", "-", "a W&B API key, read as a secret and never written (WANDB_API_KEY serves too)"]
             for key in SECRET_KEYS]
    return "config keys (--section.key VALUE or --section.key=VALUE; docs/CONFIG.md says what each does):\n" + \
        "\n".join("  " + line for line in render(["key", "default", "allowed"], rows))


def parse_args(argv):
    parser = OneLineArgumentParser(prog="python -m trainers.train", description=__doc__.splitlines()[0],
                                   epilog=_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config YAML (the research's schema)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (the file, its inherits and the overrides) and exit")
    parser.add_argument("--out_dir", "--out-dir", dest="out_dir", help=f"where runs go (default: config out_dir or {DEFAULT_OUT_DIR})")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: training.device)")
    args, rest = parser.parse_known_args(argv)
    return args, parse_override_args(rest)


class RunLog:
    """The run's `metrics.jsonl` and progress bar, fed by the training loop's reporter."""

    def __init__(self, run_dir: Path, total_steps: int, history: list[dict]):
        from tqdm import tqdm

        self.path = run_dir / "metrics.jsonl"
        # the history a resume starts from, whole; the rows after it are appended as they come
        atomic.write_text(self.path, "".join(json.dumps(row) + "\n" for row in history))
        done = history[-1]["step"] + 1 if history else 0
        self.bar = tqdm(total=total_steps, initial=done, unit="step", dynamic_ncols=True, disable=None)

    def __call__(self, row: dict, checkpoint_dir) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.bar.update(row["step"] + 1 - self.bar.n)
        shown = {"loss": f"{row['overall_loss']:.4f}", "loops": row["n_loops"], "points": row["n_points"]}
        if "eval/loss" in row:
            shown["eval"] = f"{row['eval/loss']:.4f}"
        self.bar.set_postfix(shown, refresh=False)


def _prepare_run_dir(args, config, config_path: Path) -> tuple[Path, Path | None]:
    from trainers.checkpoint import latest_checkpoint

    out_dir = Path(args.out_dir or config.out_dir or DEFAULT_OUT_DIR)
    run_dir = out_dir / (config.wandb.name or config_path.stem)
    checkpoint = latest_checkpoint(run_dir)
    if args.resume and checkpoint is None:
        raise ConfigError(f"--resume: no checkpoint under {run_dir / 'checkpoints'} to resume from")
    if not args.resume and checkpoint is not None:
        raise ConfigError(f"{run_dir}: a run already exists there; add --resume or pick another --wandb.name")
    return run_dir, checkpoint


def _open_wandb_run(config, run_dir: Path, history: list[dict]):
    """`wandb.enabled: true`: the run logs to W&B with the config's project, entity, group and mode. Its id comes
    from the run's folder, so `--resume` continues the same W&B run."""
    from trainers.wandb_log import WandbRun

    run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    settings = {"mode": config.wandb.mode, "project": config.wandb.project, "entity": config.wandb.entity,
                "group": config.wandb.group}
    return WandbRun(config, {}, (), settings, str(run_dir), run_id=run_id, history=history)


def _check_device(config, device: str | None, config_path: str) -> None:
    """The device the run will use must exist here; otherwise the run would stop with a traceback in training."""
    import torch

    wanted = device or config.training.device
    where = f"--device {device}" if device else f"{config_path}: training.device"
    if wanted == "auto":
        return
    try:
        parsed = torch.device(wanted)
    except RuntimeError:
        raise ConfigError(f"{where}: expected auto, cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"{where}: expected auto, cpu, cuda or cuda:N")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{where}: torch sees {torch.cuda.device_count()} CUDA device(s) here; use cpu or auto")


def main(argv=None) -> int:
    with one_line_warnings():
        return _train(argv)


def _train(argv) -> int:
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        config = load_config(args.config, overrides)
        if args.print_config:
            print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
            return 0
        # torch (2-3 s to import) only for a valid command line and config: a typo fails at once
        from trainers.checkpoint import check_pretrained, load_checkpoint
        from trainers.training import train

        _check_device(config, args.device, args.config)
        check_pretrained(config, args.config)
        run_dir, checkpoint = _prepare_run_dir(args, config, Path(args.config))
        history = load_checkpoint(checkpoint)["metrics"] if checkpoint else []
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    log = RunLog(run_dir, config.training.train_steps, history)
    wandb_run = _open_wandb_run(config, run_dir, history) if config.wandb.enabled else None

    def report(row: dict, checkpoint_dir) -> None:
        log(row, checkpoint_dir)
        if wandb_run is not None:
            wandb_run.log(row)

    try:
        row = train(config, out_dir=run_dir, reporter=report, resume_from=checkpoint, device=args.device)
    finally:
        log.bar.close()
        if wandb_run is not None:
            wandb_run.finish()
    print(f"run: {run_dir}")
    if row.get("diverged"):
        print(f"diverged at step {row['step']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
