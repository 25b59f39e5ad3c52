"""Per-op glue: fake (meta) kernels for the registered ops and the autograd.Functions."""
