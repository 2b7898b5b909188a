"""Torch models that compression stages write: a weights-only state_dict plus the edits that rebuild its structure.

A pruned or factorised model no longer fits the factory's architecture, and pickling whole modules would make the
run folder unsafe to load. So a torch artifact stores only tensors (``torch.save`` of the state_dict, read back with
``weights_only=True``) and, in ``details["structure"]``, the list of structural edits applied since the source
(channels removed, layers factorised, batch norms folded). Rebuilding = a fresh source module, the same edits in the
same order, then ``load_state_dict``. A cached stage is restored this way without running it again.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from edgepack.core.artifacts import Artifact, Format, atomic_path, sha256_file


def _resize(module: torch.nn.Module, state: dict, edit: dict) -> torch.nn.Module:
    from edgepack.compression.structured import resize_to_state_dict

    resize_to_state_dict(module, state)
    return module


def _low_rank(module: torch.nn.Module, state: dict, edit: dict) -> torch.nn.Module:
    from edgepack.compression.factorisation import apply_structure

    apply_structure(module, edit["layers"])
    return module


def _fold_batchnorm(module: torch.nn.Module, state: dict, edit: dict) -> torch.nn.Module:
    from edgepack.compression.qat_model import fold_batch_norm

    _size_batch_norms_to_their_layers(module)
    return fold_batch_norm(module)


def _size_batch_norms_to_their_layers(module: torch.nn.Module) -> None:
    """A folded BatchNorm is absent from the saved state, so a channel-pruned rebuild left it at the source's size
    and the fold failed on the shapes; give it its conv's channels (its values vanish into the saved folded conv)."""
    from torch import fx, nn

    traced = fx.symbolic_trace(module)  # shares the submodules: a replacement lands in ``module``
    layers = dict(traced.named_modules())
    for node in traced.graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        norm = layers.get(node.target) if node.op == "call_module" else None
        if isinstance(norm, nn.modules.batchnorm._BatchNorm) and getattr(source, "op", None) == "call_module":
            channels = _out_channels(layers[source.target])
            if channels is not None and channels != norm.num_features:
                _replace(module, node.target, type(norm)(channels, norm.eps, norm.momentum, norm.affine))


def _out_channels(layer: torch.nn.Module) -> int | None:
    """What the resize set (``update_layer_attributes``), for convs transposed or not."""
    if isinstance(layer, torch.nn.Linear):
        return layer.out_features
    return layer.out_channels if isinstance(layer, torch.nn.modules.conv._ConvNd) else None


def _replace(root: torch.nn.Module, target: str, module: torch.nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


# Structural edit kind -> how to redo it on a fresh module (given the final state_dict for shapes).
STRUCTURE_EDITS: dict[str, Callable[[torch.nn.Module, dict, dict], torch.nn.Module]] = {
    "channels_removed": _resize,
    "low_rank": _low_rank,
    "fold_batchnorm": _fold_batchnorm,
}


def register_structure_edit(kind: str, redo: Callable[[torch.nn.Module, dict, dict], torch.nn.Module]) -> None:
    STRUCTURE_EDITS[kind] = redo


def module_of(ctx, artifact: Artifact) -> torch.nn.Module:
    """The torch module of a torch artifact: the loaded source, one made this run, or rebuilt from its file."""
    if artifact.stage == "load":
        return ctx.loaded.module
    modules = ctx.torch_modules
    if artifact.name not in modules:
        modules[artifact.name] = rebuild(ctx, artifact)
    return modules[artifact.name]


def rebuild(ctx, artifact: Artifact) -> torch.nn.Module:
    state = torch.load(ctx.artifact_path(artifact), map_location="cpu", weights_only=True)
    module = _fresh_source_module(ctx)
    for edit in artifact.details.get("structure", []):
        module = STRUCTURE_EDITS[edit["kind"]](module, state, edit)
    module.load_state_dict(state)
    return module.eval()


def _fresh_source_module(ctx) -> torch.nn.Module:
    """An unedited copy of the source architecture (its weights are replaced by the state_dict's)."""
    return copy.deepcopy(ctx.loaded.module)


def save_torch_artifact(ctx, module: torch.nn.Module, *, name: str, stage: str, parent: Artifact,
                        edits: list[dict] = (), **details) -> Artifact:  # fmt: skip
    """Write the module's state_dict atomically and describe it; ``edits`` are this stage's structural edits."""
    module = module.eval()
    name = _unique_name(ctx, name)
    out = ctx.artifact_file(name, ".pt")
    with atomic_path(out) as tmp:
        torch.save(module.state_dict(), tmp)
    structure = [*parent.details.get("structure", []), *edits]
    ctx.torch_modules[name] = module
    return Artifact(
        name=name, format=Format.TORCH, path=str(out.relative_to(ctx.run_dir)), sha256=sha256_file(out),
        bytes=parameter_bytes(module), parent=parent.name, stage=stage, inputs=parent.inputs,
        details={"structure": structure, "parameters": parameter_count(module), "file_bytes": out.stat().st_size,
                 **details},
    )  # fmt: skip


def _unique_name(ctx, name: str) -> str:
    """A recipe may prune twice (structured, then unstructured): the second is torch-pruned-2."""
    taken = {a.name for a in ctx.artifacts}
    candidates = (name if n == 1 else f"{name}-{n}" for n in range(1, len(taken) + 2))
    return next(c for c in candidates if c not in taken)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
