"""Writes learned_d1.pt beside it: a tiny plain transformer (n_embd 32, one layer) trained on 1-D linear
regression with 4 points until it predicts well below predict-0 (about 0.3 of it at the last position).

The sequential-study sweep test (tests/test_study.py) starts its trials from it through `model.pretrained_path`:
trials of a few dozen steps from scratch never learn, and a reference that did not learn decides nothing.
Run it again (`python tests/data/learned_d1.py`, 1-2 min on one core) only if the model's layout changes.
"""
import tempfile
from pathlib import Path

import torch

from trainers.config import config_from_dict
from trainers.training import train

HERE = Path(__file__).resolve().parent
LEARNED = {
    "model": {"family": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_dims": 1, "n_positions": 4},
    "training": {"batch_size": 64, "learning_rate": 0.003, "train_steps": 3000, "save_every_steps": 3000,
                 "eval_every_steps": 3000, "eval_prompts": 1280, "onednn_linear": True,
                 "curriculum": {"dims": {"start": 1, "end": 1, "inc": 1, "interval": 100},
                                "points": {"start": 4, "end": 4, "inc": 1, "interval": 100}}},
    "wandb": {"log_every_steps": 1000},
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        last = train(config_from_dict(LEARNED, "learned_d1"), out_dir=Path(folder))
        checkpoint = torch.load(next(Path(folder).glob("checkpoints/step_*/checkpoint.pt")), weights_only=True)
    torch.save(checkpoint["model"], HERE / "learned_d1.pt")
    print(f"learned_d1.pt: eval/loss_last {last['eval/loss_last']:.3f} of predict-0")
