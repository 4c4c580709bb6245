"""Compiling the Triton kernels for a GPU on a machine without one.

The interpreter (TRITON_INTERPRET=1, set by conftest.py) runs a kernel as Python and never meets
the compiler, so what only compiling rejects (a non-constexpr global, a type clash between the
branches of a constexpr `if`, too much shared memory) passes there. Triton's ahead-of-time entry
point compiles a kernel for an H100 (sm_90) to PTX and cubin without a device.

Triton cannot compile in a process that imported it in interpreter mode (@triton.jit then gives
interpreted functions), so a test writes a short script that calls `compile_for_gpu` and prints
what it found, and runs it with `run_compile_script` in a fresh process without the interpreter.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

TESTS = Path(__file__).resolve().parent
H100 = 90  # compute capability of the GPU the kernels are tuned for
H100_SHARED_BYTES = 232448  # most shared memory one H100 block may use (227 KiB)


def run_compile_script(script: str, cache_dir: Path, timeout: float = 600) -> str:
    """Run `script` in a fresh Python with TRITON_INTERPRET=0 and this folder on its path; return
    its stdout. Fails the test with the end of stderr when the script fails. Warnings are errors
    there as in the test run (a launch option left to Triton's default warns when compiled).
    `cache_dir` (a test's tmp_path) keeps Triton's cache out of the home folder and makes every
    run really compile."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "TRITON_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": path,
    }
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def signature(
    kernel: Any,
    types: Mapping[str, str],
    constants: Mapping[str, object],
    default: Optional[str] = None,
) -> tuple[dict[str, str], dict[tuple[int, ...], object]]:
    """ASTSource's (signature, constexprs) for a @triton.jit kernel.

    `types` maps parameter names to Triton types ("*bf16", "i64", "fp32", ...), `constants` maps
    the constexpr parameters to their values; a parameter named in neither gets `default`, or is
    an error when there is none (so a renamed parameter cannot go untested).
    """
    names = list(inspect.signature(kernel.fn).parameters)
    unknown = sorted((set(types) | set(constants)) - set(names))
    if unknown:
        raise ValueError(f"{kernel.fn.__name__} has no parameters {unknown}; it has {names}")
    sig = {}
    for name in names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in types:
            sig[name] = types[name]
        elif default is not None:
            sig[name] = default
        else:
            raise ValueError(f"no type given for parameter {name!r} of {kernel.fn.__name__}")
    return sig, {(names.index(name),): value for name, value in constants.items()}


def compile_for_gpu(
    kernel: Any,
    types: Mapping[str, str],
    constants: Mapping[str, object],
    default: Optional[str] = None,
    capability: int = H100,
    **options: Any,
) -> Any:
    """Compile `kernel` for a CUDA GPU of `capability` (warp size 32); `options` are launch
    options (num_warps, num_stages, enable_fp_fusion). Returns Triton's CompiledKernel, whose
    `asm` holds "ptx" and "cubin" and `metadata.shared` the shared memory it needs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs = signature(kernel, types, constants, default)
    source = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def compile_aligned(
    kernel: Any,
    types: Mapping[str, str],
    constants: Mapping[str, object],
    divisible: list[str],
    ones: list[str],
    **options: Any,
) -> Any:
    """`compile_for_gpu` (for an H100) as a launch with aligned inputs compiles: pointers and the
    `divisible` ints get tt.divisibility=16, `ones` (ints equal to 1) become constants, other
    ints are plain i32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs = signature(kernel, types, {**constants, **dict.fromkeys(ones, 1)}, "i32")
    names = list(inspect.signature(kernel.fn).parameters)
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(names)
        if sig[name].startswith("*") or name in divisible
    }
    source = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", H100, 32), options=options)
