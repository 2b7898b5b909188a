"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
the OBQ update of Frantar & Alistarh 2022) for the int8 weights of Conv, Gemm and MatMul layers of a float ONNX graph.

Rounding each weight to the nearest integer minimises each weight's own error, not the layer's. GPTQ minimises the
layer's output error ||(W - W_q) X||^2 over the calibration inputs X: it rounds one input column of W at a time and
moves that column's rounding error onto the columns not rounded yet, through the inverse of H = X X^T (the input's
second moments; damped by 1% of its mean diagonal), so that they absorb it; the columns go in decreasing order of
their input's energy (the GPTQ code's "act order": on EfficientNet-Lite1 it lowered KL to float by a third against
plain column order, README's table). No iterations: one Cholesky factorisation per layer (per group of a grouped or
depthwise Conv, all groups at once) and one pass over the columns, in blocks of ``BLOCK`` with the rest updated by
one matrix product per block. The layer inputs are the float model's
(as AdaRound's, calibration/adaround.py), streamed: H is summed batch by batch over at most ``MAX_ROWS`` rows per
layer, and the inputs themselves are never kept.

Like AdaRound, the scales stay those of ``weight_params`` (symmetric, max|w| / 127 per output channel) and the result
is written back into the float model as s x q with each scale group's largest weight kept exactly: that weight is
never moved by the updates, so both writers (ONNX QDQ and TFLite) re-derive exactly these integers on the same
scales. A layer keeps nearest rounding where GPTQ's output error on its rows is not lower (it always was lower on the
models measured).
"""

from __future__ import annotations

import time

import numpy as np
import onnx
from edgepack.calibration.adaround import AdaRounding, on_grid, runnable
from edgepack.calibration.collect import read_tensors
from onnx import numpy_helper

from edgepack.core.dataset import ArrayDataset
from edgepack.core.quantization import QuantPlan, weight_params

MAX_ROWS = 16384  # rows (positions x samples) per layer that H is summed over
BLOCK = 128  # columns rounded between the matrix-product updates of the rest
DAMPING = 0.01  # of H's mean diagonal, added to the diagonal: H of few samples is singular


def gptq_model(model: onnx.ModelProto, plan: QuantPlan, dataset: ArrayDataset, *,
               per_channel: bool = True) -> AdaRounding:  # fmt: skip
    """GPTQ rounding of every planned weight of a layer it can read as a matrix product (Conv 1-D/2-D, Gemm,
    2-D MatMul weights); the others keep nearest rounding."""
    import torch

    started = time.perf_counter()
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    nodes = {n.name: n for n in rounded.graph.node}
    initializers = {t.name: t for t in rounded.graph.initializer}
    layers = [w for w in plan.weights if _readable(nodes[w.node], initializers[w.initializer])]
    views = {w.node: _MatrixView(nodes[w.node], tuple(initializers[w.initializer].dims)) for w in layers}
    moments = _second_moments(rounded, views, dataset)
    result = AdaRounding(rounded)
    with torch.no_grad():
        for weight in layers:
            node, tensor = nodes[weight.node], initializers[weight.initializer]
            values = numpy_helper.to_array(tensor)
            params = weight_params(values, weight.axis if per_channel else None)
            q, record = _round(views[weight.node], moments[weight.node], values, params)
            tensor.CopyFrom(numpy_helper.from_array(on_grid(values, q, params), weight.initializer))
            result.layers.append({"node": node.name} | record)
    result.seconds = time.perf_counter() - started
    return result


def _second_moments(model: onnx.ModelProto, views: dict[str, _MatrixView], dataset: ArrayDataset) -> dict:
    """Each layer's H over the float model's inputs to it, summed batch by batch as they stream by (only the sums
    are kept, never the inputs), over the first samples holding MAX_ROWS of its rows (at least one sample)."""
    import torch

    sums, rows = {}, dict.fromkeys(views, 0)
    with torch.no_grad():
        for batch in read_tensors(model, sorted({v.node.input[0] for v in views.values()}), dataset):
            for node, view in views.items():
                if rows[node] >= MAX_ROWS:
                    continue
                x = batch.real(view.node.input[0])
                x = x[: max(1, -(-(MAX_ROWS - rows[node]) // view.rows_per_sample(x)))]
                found, count = view.moment_sums(torch.from_numpy(x.astype(np.float32, copy=False)))
                sums[node] = found if node not in sums else sums[node] + found
                rows[node] += count
    return {node: total / max(rows[node], 1) for node, total in sums.items()}


def _readable(node: onnx.NodeProto, weight: onnx.TensorProto) -> bool:
    if node.op_type == "MatMul":
        return len(weight.dims) == 2 and node.input[1] == weight.name
    return runnable(node) and (node.op_type != "Conv" or len(weight.dims) in (3, 4))


def round_layer(node: onnx.NodeProto, inputs: np.ndarray, weights: np.ndarray, params) -> tuple[np.ndarray, dict]:
    """(the integers, in the weight's own layout; the layer's output error for nearest and for GPTQ rounding, each
    relative to the output's energy) of one layer on ``inputs``, all of them."""
    import torch

    view = _MatrixView(node, weights.shape)
    sums, rows = view.moment_sums(torch.from_numpy(inputs.astype(np.float32, copy=False)))
    return _round(view, sums / max(rows, 1), weights, params)


def _round(view: _MatrixView, h, weights: np.ndarray, params) -> tuple[np.ndarray, dict]:
    """``round_layer`` given the layer input's second moments ``h`` [groups, d, d]."""
    import torch

    w = view.matrix(torch.from_numpy(weights.astype(np.float64)))  # [groups, out, d]
    scale = view.matrix(torch.from_numpy(_scale_tensor(params, weights)))
    nearest = torch.clamp(torch.round(w / scale), params.qmin, params.qmax)
    try:
        learned = _in_activation_order(w, h, scale, _largest(weights, params, view), params.qmin, params.qmax)
    except torch.linalg.LinAlgError:  # H not positive definite even damped (non-finite inputs): nearest it is
        learned = nearest
    energy = float(torch.einsum("god,gde,goe->", w, h, w)) or 1.0
    residuals = (w - scale * nearest, w - scale * learned)
    errors = [float(torch.einsum("god,gde,goe->", e, h, e)) / energy for e in residuals]
    chosen = learned if errors[1] < errors[0] else nearest  # NaN (non-finite inputs) compares False: nearest
    q = view.tensor(chosen).numpy().astype(np.int8)
    changed = float(np.mean(q != params.quantize(weights)))
    return q, {"error_nearest": errors[0], "error_gptq": min(errors), "changed": round(changed, 4)}


def _in_activation_order(w, h, scale, locked, qmin: int, qmax: int):
    """GPTQ over the columns in decreasing order of their input's energy (H's diagonal; "act order" of the GPTQ
    code): the columns that matter most are rounded first, while the most columns are left to absorb their error."""
    import torch

    order = torch.argsort(torch.diagonal(h, dim1=1, dim2=2), dim=1, descending=True)  # [groups, d]

    def by_column(t):
        return torch.gather(t, 2, order[:, None, :].expand(t.shape))

    rows_ordered = torch.gather(h, 1, order[:, :, None].expand(h.shape))
    ordered_h = torch.gather(rows_ordered, 2, order[:, None, :].expand(h.shape))
    q = _gptq(by_column(w), ordered_h, by_column(scale), by_column(locked), qmin, qmax)
    return torch.empty_like(q).scatter_(2, order[:, None, :].expand(q.shape), q)


def _gptq(w, h, scale, locked, qmin: int, qmax: int):
    """The integers of ``w`` [groups, out, d] by GPTQ against ``h`` [groups, d, d]; ``locked`` (a mask like w) marks
    the weights that keep their value (each scale group's largest) and so take no share of other columns' errors."""
    import torch

    w, original = w.clone(), w
    dead = torch.diagonal(h, dim1=1, dim2=2) == 0  # inputs never nonzero on the data: nothing to compensate with
    h = h.clone()
    h[torch.diag_embed(dead)] = 1.0
    mean_diagonal = torch.diagonal(h, dim1=1, dim2=2).mean(dim=1)
    h += DAMPING * mean_diagonal[:, None, None] * torch.eye(h.shape[-1], dtype=h.dtype)
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    d = w.shape[-1]
    for start in range(0, d, BLOCK):
        stop = min(start + BLOCK, d)
        block, errors = w[..., start:stop].clone(), torch.zeros_like(w[..., start:stop])
        for i in range(stop - start):
            column = block[..., i]
            q[..., start + i] = torch.clamp(torch.round(column / scale[..., start + i]), qmin, qmax)
            error = (column - q[..., start + i] * scale[..., start + i]) / inverse[:, None, start + i, start + i]
            block[..., i:] -= error[..., None] * inverse[:, None, start + i, start + i : stop]
            block = torch.where(locked[..., start:stop], original[..., start:stop], block)
            errors[..., i] = error
        w[..., stop:] -= errors @ inverse[:, start:stop, stop:]
        w = torch.where(locked, original, w)
    return q


def _scale_tensor(params, weights: np.ndarray) -> np.ndarray:
    """Each weight's scale, broadcast to the weight's shape."""
    scale = np.asarray(params.scale, np.float64)
    if params.axis is None:
        return np.full(weights.shape, float(scale))
    shape = [1] * weights.ndim
    shape[params.axis] = -1
    return np.broadcast_to(scale.reshape(shape), weights.shape).copy()


def _largest(weights: np.ndarray, params, view: _MatrixView):
    """The mask of each scale group's largest |w| (one per output channel, or one for the tensor)."""
    import torch

    magnitude = np.abs(weights)
    mask = np.zeros(weights.shape, bool)
    if params.axis is None:
        mask.flat[int(np.argmax(magnitude))] = True
    else:
        moved = np.moveaxis(magnitude, params.axis, 0).reshape(weights.shape[params.axis], -1)
        flags = np.zeros(moved.shape, bool)
        flags[np.arange(len(moved)), moved.argmax(axis=1)] = True
        mask = np.moveaxis(flags.reshape(np.moveaxis(magnitude, params.axis, 0).shape), 0, params.axis)
    return view.matrix(torch.from_numpy(np.ascontiguousarray(mask)))


class _MatrixView:
    """A layer as groups of matrix products: output [groups, out, rows] = W [groups, out, d] @ X [groups, d, rows],
    with W taken from the stored weight and X from the layer input (a Conv's through im2col, its pads applied)."""

    def __init__(self, node: onnx.NodeProto, shape: tuple[int, ...]):
        self.node, self.shape = node, shape
        self.attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        self.groups = int(self.attributes.get("group", 1)) if node.op_type == "Conv" else 1
        self.transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not self.attributes.get("transB", 0))

    def matrix(self, tensor):
        """The stored weight (or anything of its shape) as [groups, out, d]."""
        if self.node.op_type == "Conv":
            return tensor.reshape(self.groups, self.shape[0] // self.groups, -1)
        return (tensor.T if self.transposed else tensor)[None]

    def tensor(self, matrix):
        """The inverse of ``matrix``."""
        if self.node.op_type == "Conv":
            return matrix.reshape(self.shape)
        return matrix[0].T if self.transposed else matrix[0]

    def rows_per_sample(self, x: np.ndarray) -> int:
        """A sample's rows of X at most: a Conv's input positions (its output has no more), a MatMul's rows."""
        return max(1, int(np.prod(x.shape[2:] if self.node.op_type == "Conv" else x.shape[1:-1])))

    def moment_sums(self, x):
        """(X X^T summed over the rows of the layer input ``x``, [groups, d, d] in float64 (float32 sums: ample for
        8-bit steps); the rows): a Conv's X are its input patches (im2col, pads applied), per sample, not copied."""
        import torch.nn.functional as F  # noqa: N812

        if self.node.op_type != "Conv":
            rows = x.reshape(-1, x.shape[-1])
            return (rows.T @ rows)[None].double(), len(rows)
        spatial = len(self.shape) - 2
        if self.groups == 1 and self._pointwise(spatial):  # 1x1, stride 1, no pads: the positions are the rows
            rows = x.movedim(1, -1).reshape(-1, x.shape[1])
            return (rows.T @ rows)[None].double(), len(rows)
        kernel = list(self.shape[2:])
        pads = self.attributes.get("pads", [0] * 2 * spatial)
        x = F.pad(x, [p for i in reversed(range(spatial)) for p in (pads[i], pads[i + spatial])])
        strides = self.attributes.get("strides", [1] * spatial)
        dilations = self.attributes.get("dilations", [1] * spatial)
        if spatial == 1:  # as a 2-D conv of height 1
            x, kernel, strides, dilations = x[:, :, None], [1, *kernel], [1, *strides], [1, *dilations]
        patches = F.unfold(x, kernel, dilation=dilations, stride=strides)  # [N, C * k, L], channel-major like W
        n, width, length = patches.shape
        per_group = patches.reshape(n * self.groups, width // self.groups, length)
        moments = (per_group @ per_group.transpose(1, 2)).reshape(n, self.groups, width // self.groups, -1).sum(0)
        return moments.double(), n * length

    def _pointwise(self, spatial: int) -> bool:
        ones = [1] * spatial
        return (list(self.shape[2:]) == ones and self.attributes.get("strides", ones) == ones
                and not any(self.attributes.get("pads", [0])))  # fmt: skip
