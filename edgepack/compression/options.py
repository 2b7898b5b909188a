"""The options of the compression stages as data (pydantic models and enums), apart from the torch code that
carries them out, so a recipe is read and checked without loading torch."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Optimizer(StrEnum):
    ADAM = "adam"
    SGD = "sgd"


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    epochs: int = Field(10, ge=1, description="Passes over the training data.")
    batch_size: int = Field(64, ge=1, description="Samples per optimizer step.")
    learning_rate: float = Field(3e-3, gt=0, description="Step size of the optimizer.")
    optimizer: Optimizer = Field(Optimizer.ADAM, description="'adam' or 'sgd' (SGD uses momentum 0.9).")
    temperature: float = Field(
        2.0, gt=0, description="Softens teacher and student outputs for the soft-target term (T in Hinton et al.)."
    )
    alpha: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Weight of the soft-target (teacher) term; 1 - alpha weighs the labels. 0 = labels only.",
    )
    feature_matching: list[tuple[str, str]] = Field(
        default_factory=list,
        description="[student_layer, teacher_layer] pairs whose outputs are pulled together by MSE; shapes must match.",
    )
    feature_weight: float = Field(1.0, ge=0, description="Weight of the feature-matching MSE term.")
    seed: int = Field(0, description="Seeds torch and the shuffling, so a run is repeatable.")


class Scope(StrEnum):
    LAYER = "layer"  # every layer loses the same fraction of its weights
    GLOBAL = "global"  # one magnitude threshold shared by all layers


class Importance(StrEnum):
    L1 = "l1"  # L1 norm of the channel's weights, summed over the layers that shrink with it
    L2 = "l2"
    BN_SCALE = "bn_scale"  # |gamma| of the BatchNorm after the channel (network slimming)
    TAYLOR = "taylor"  # |weight x gradient| of the loss: first-order estimate of the loss change (Molchanov 2019)


class ConvDecomposition(StrEnum):
    CHANNEL = "channel"
    SPATIAL = "spatial"


class WeightMode(StrEnum):
    """How weights are simulated. binary/ternary are exported as int8 tensors holding two or three values."""

    INT8 = "int8"  # per-channel symmetric narrow int8 (max|w| / 127), what the exporters write
    BINARY = "binary"  # sign(w) x per-channel mean|w| (XNOR-Net)
    TERNARY = "ternary"  # {-a, 0, +a} per channel, threshold 0.7 x mean|w| (TWN, Li & Liu 2016)


class QatOptions(BaseModel):
    """How QAT trains the quantization it simulates (the scheme itself comes from the Calibration)."""

    model_config = ConfigDict(extra="forbid", use_enum_values=True)
    learn_ranges: bool = Field(False, description="Learn activation ranges (LSQ gradient) instead of observing them.")
    weight_bits: WeightMode = Field(
        WeightMode.INT8,
        description="int8, binary (XNOR-Net) or ternary (TWN) weights; "
        "binary/ternary still ship as int8 tensors holding 2 or 3 values per channel.",
    )
    momentum: float = Field(
        0.01,
        gt=0,
        le=1,
        description="Weight of a new batch's min/max in the observed ranges "
        "(exponential moving average); ignored with learn_ranges.",
    )
