"""Shared helpers the converters are thin over: types and casts, constants, shape tensors for dynamic dims,
elementwise with broadcasting, RMSNorm from primitives and the native attention layer."""
