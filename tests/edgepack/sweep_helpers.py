"""The sweep the Ray tests run: the digits conv_net with four weight files as the grid, one of them broken."""

from __future__ import annotations

from pathlib import Path

from edgepack.running.pipeline import pack
from tests.edgepack.helpers import image_recipe, write_recipe

SCALES = (1.0, 0.7, 0.4)  # three working variants, each its own weights (so its own artifact hashes and top-1)


def sweep_inputs(folder: Path, trained: Path) -> tuple[Path, str]:
    """(recipe, the --grid text): model.weights over three scaled copies of ``trained`` and one file that is not a
    state_dict, which fails when the run loads it."""
    import torch

    state = torch.load(trained, weights_only=True)
    weights = []
    for scale in SCALES:
        path = folder / f"w{scale}.pt"
        torch.save({name: tensor * scale if tensor.is_floating_point() else tensor for name, tensor in state.items()},
                   path)  # fmt: skip
        weights.append(path)
    broken = folder / "broken.pt"
    broken.write_bytes(b"not a state dict")
    recipe = image_recipe("conv_net", weights[0], stages=[{"stage": "export", "exporter": "legacy"}], robustness=None,
                          gate={"max_accuracy_drop": 2.0, "max_bytes": 100_000})  # fmt: skip
    return write_recipe(folder, recipe), "model.weights=" + ",".join(str(p) for p in [*weights, broken])


def hashes(artifacts: list[dict]) -> dict[str, str]:
    return {a["name"]: a["sha256"] for a in artifacts}


def packed_alone(recipe: Path, override: str, out: Path) -> dict[str, str]:
    """The artifact hashes of one variant packed by itself, as 'edgepack pack --set' would."""
    return hashes(pack(recipe, out=out, overrides=[override], quiet=True).artifacts)
