"""The leaf core: the types every package shares, importing no other project module.

errors (the one error hierarchy), artifacts (Artifact, TensorSpec, formats and precisions, atomic writes), dataset
(the data contract: named arrays with a known length), quantization (QuantParams and QuantPlan: what calibration
decides and every backend writes), config (the strict config base), results_format (the keys of results.json).
"""
