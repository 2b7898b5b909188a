"""edgepack: trained model in, verified and benchmarked ONNX/TFLite artifacts out."""

__version__ = "0.1.0"
