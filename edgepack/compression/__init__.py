"""What compression stages do to a torch model: pruning (unstructured and structured), low-rank factorisation,
fine-tuning with distillation, and QAT (fake-quant that simulates the quantize stage's scheme)."""
