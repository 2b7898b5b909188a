"""What the runtimes' integer kernels do, in one table: the quantization plan, the sensitivity search, the
converters and the quantize stage all read it, so a fact about a kernel is written once. Keys are ONNX op types.

edgepack quantizes where the TFLite file keeps a tensor after its own fusions, and writes the ONNX QDQ file to the
same plan, so onnxruntime (which fuses QDQ around the same ops) and LiteRT compute on the same grids.
"""

from __future__ import annotations

# A Conv/Gemm/MatMul/Add followed only by one of these is one TFLite op (the activation fused into its kernel): the
# quantization point is after the activation.
FUSED_ACTIVATIONS = {"Relu", "Clip"}
FUSING_PRODUCERS = {"Conv", "Gemm", "MatMul", "Add"}

# Ops that only move data: their TFLite int8 kernels must keep the input's grid, so the output shares it.
SAME_GRID_OPS = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout",
                 "Slice", "Split", "GlobalMaxPool"}  # fmt: skip

# TFLite's int8/int16 kernels for these ops accept only one output grid (their outputs lie in a known interval).
FIXED_OUTPUT_GRIDS = {"Softmax": (0.0, 1.0), "Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)}

# Elementwise arithmetic whose TFLite 16-bit kernels read a constant operand on an integer grid of its own.
CONSTANT_OPERAND_OPS = {"Add", "Sub", "Mul", "Div"}

# ONNX ops whose TFLite kernels have no 16-bit version (ONNX op -> TFLite op): a 16x8 TFLite file cannot hold them
# between int16 tensors, and keeping them float would let the converter invent ranges edgepack did not compute.
NO_INT16_TFLITE_KERNEL = {"HardSwish": "HARD_SWISH", "Gelu": "GELU"}

# ONNX ops whose TFLite int8 kernel the converter gives its input's grid when no fake-quant says otherwise: a float
# island (mixed precision) cannot start at one of these.
INPUT_GRID_OPS = {"GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceMax", "Concat", "Pad", "Resize", "Max",
                  "Min", "Relu", "Clip", "LeakyRelu", "DepthToSpace", "SpaceToDepth", "Split"}  # fmt: skip
