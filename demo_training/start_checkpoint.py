"""Start checkpoint for a `demo` training stage that adds parameters to the architecture.

Applies an earlier stage's weights to the current `demo` preset's architecture; the parameters the earlier stage
lacks keep their initial values (stage 6's position map: zeros, so the new model starts with stage 5's output,
which the script checks). ``rsrs train`` then starts from the file through ``model.init_checkpoint``.

Stage 6 (demo_training/stages/demo-stage6.yaml), from the repository root:
    git show 48c1720:configs/models/demo.safetensors > runs/stage5.safetensors
    python -m demo_training.start_checkpoint runs/stage5.safetensors runs/demo-stage6/start.safetensors
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import load_file

from rsrs.model import get_model_config, load_model
from rsrs.model.checkpoint import read_checkpoint_config, save_checkpoint
from rsrs.model.registry import build_model
from rsrs.model.rsrefseg.config import RSRefSegConfig


def built_with(config: RSRefSegConfig, tensors: dict[str, torch.Tensor]) -> tuple[torch.nn.Module, list[str]]:
    """The model of ``config`` at init with ``tensors`` applied, and the names of the parameters they lack."""
    model = build_model(config.model_copy(update={"checkpoint": None}), device="cpu")
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    if unexpected:
        raise SystemExit(f"the earlier checkpoint holds tensors this architecture lacks, e.g. {unexpected[0]}")
    params = dict(model.named_parameters())
    return model, [n for n in missing if n in params]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("earlier", help="the earlier stage's checkpoint (.safetensors)")
    parser.add_argument("out", help="where to write the start checkpoint")
    args = parser.parse_args()

    tensors = load_file(args.earlier)
    config = get_model_config("demo").model_copy(update={"checkpoint": None})
    model, new = built_with(config, tensors)
    print(f"parameters new in this stage (left at init): {new}")
    save_checkpoint(model, args.out, config=config)

    earlier, _ = built_with(read_checkpoint_config(args.earlier), tensors)
    tiles = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    queries = ["the leftmost building", "the pond in the upper left"]
    diff = (earlier.predict(tiles, queries) - load_model(args.out, device="cpu").predict(tiles, queries)).abs().max()
    print(f"max |probability difference| against the earlier stage: {diff:.2e}")


if __name__ == "__main__":
    main()
