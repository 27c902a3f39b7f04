"""Reading checkpoints lazily: an index of tensors from headers, tensor data on demand."""
