"""Triton kernels: tensors in, tensors out. No autograd, modules, config or dispatch here.

Importing this package does not import Triton; each kernel module does, and only ops/ imports
them, lazily."""
