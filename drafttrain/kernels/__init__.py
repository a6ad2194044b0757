"""GPU kernels written in Triton, each beside the plain-torch reference it must match.

- `tree_attention`: attention of a verify step's queries (the root and the draft tree's nodes) over
  the static KV cache: every committed slot is visible, the new slots only where the tree mask says
  so (ancestors and self). One kernel replaces SDPA with a dense [n, start + n] boolean mask.
- `int8_linear`: W8A8 projection for activation-quantized self-draft levels: per-token symmetric int8
  activations times per-output-channel int8 weights, int32 accumulation, float rescale.

The kernels run on CUDA. On a CPU they run only in Triton's interpreter (`TRITON_INTERPRET=1`,
set before triton is imported), which is how the test suite checks them against their references;
anything else fails with a message saying so. `triton` is an optional dependency (installed with
the `test` extra on Linux x86-64, and part of every CUDA build of torch).
"""
