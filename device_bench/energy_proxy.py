"""An analytic energy proxy per inference: each layer's MACs and bytes moved, times energies per operation.

The energies are Horowitz's 45 nm figures (ISSCC 2014). They make artifacts comparable with each other, the
int8 one against the float one above all; they do not predict what a given phone or board draws. A measured
figure, where a device has a sensor, comes from the runner (``record["energy"]["measured"]``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

from edgepack.device_bench.layer_costs import LayerCost, onnx_layers, tflite_layers

SOURCE = (
    "M. Horowitz, 'Computing's energy problem (and what we can do about it)', IEEE International Solid-State "
    "Circuits Conference (ISSCC) 2014, pp. 10-14: energy per operation in a 45 nm process at 0.9 V"
)
# picojoules per operation; memory per 64-bit access.
ENERGY_PJ = {
    "int8_add": 0.03,
    "int8_mult": 0.2,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "sram_64bit": 20.0,  # the paper's 32 KB cache, the size of a phone or Pi core's L1 data cache
    "dram_64bit": 1300.0,  # the low end of the paper's 1.3-2.6 nJ
}
ASSUMPTIONS = (
    "One MAC is one multiply and one add at the operands' precision (int8 when the layer's activation input and "
    "weights are both 8-bit integers; the int32 accumulation is costed as an int8 add). Weights and biases are "
    "read from DRAM once per inference; each layer's input and output activations pass through on-chip SRAM "
    "once. Only Conv/Gemm/MatMul (ONNX) and CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED (TFLite) are costed; other "
    "ops are listed in ops_not_counted. Quantization scales and zero points are not counted."
)
LAYER_READERS = {".onnx": onnx_layers, ".tflite": tflite_layers}


def mac_pj(precision: str) -> float:
    return ENERGY_PJ[f"{precision}_mult"] + ENERGY_PJ[f"{precision}_add"]


def memory_pj(layer: LayerCost) -> float:
    return layer.weight_bytes / 8 * ENERGY_PJ["dram_64bit"] + layer.activation_bytes / 8 * ENERGY_PJ["sram_64bit"]


def layer_entry(layer: LayerCost) -> dict:
    compute, memory = layer.macs * mac_pj(layer.precision), memory_pj(layer)
    return asdict(layer) | {"compute_uj": compute * 1e-6, "memory_uj": memory * 1e-6}


def totals(layers: list[dict], not_counted: Counter) -> dict:
    compute = sum(layer["compute_uj"] for layer in layers)
    memory = sum(layer["memory_uj"] for layer in layers)
    macs = Counter()
    for layer in layers:
        macs[layer["precision"]] += layer["macs"]
    return {
        "method": "analytic proxy",
        "uj_per_inference": compute + memory,
        "compute_uj": compute,
        "memory_uj": memory,
        "macs": dict(macs),
        "weight_bytes": sum(layer["weight_bytes"] for layer in layers),
        "activation_bytes": sum(layer["activation_bytes"] for layer in layers),
        "layers": layers,
        "ops_not_counted": dict(not_counted),
    }


def energy_proxy(model_path: Path | str) -> dict:
    """The proxy for a .onnx or .tflite file, with the constants, their source and the assumptions."""
    path = Path(model_path)
    reader = LAYER_READERS.get(path.suffix.lower())
    cited = {"constants_pj": ENERGY_PJ, "source": SOURCE, "assumptions": ASSUMPTIONS}
    if reader is None:
        return {"method": "analytic proxy", "error": f"no layer reader for {path.suffix!r} files"} | cited
    try:
        layers, not_counted = reader(path)
    except Exception as error:  # the measured figures must survive a model the counter cannot read (a custom op)
        return {"method": "analytic proxy", "error": f"{type(error).__name__}: {error}"} | cited
    return totals([layer_entry(layer) for layer in layers], not_counted) | cited
