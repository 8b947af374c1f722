"""Whether the 16-bit flags can pay on this machine. No TensorFlow, no flags.

bfloat16 (`--precision=mixed_bfloat16|bfloat16_convs`, `--sinkhorn_products=bfloat16*`) is
fast on a CPU only with bfloat16 instructions (AVX-512-BF16 or AMX-BF16, the
`avx512_bf16` / `amx_bf16` flags of /proc/cpuinfo); without them oneDNN emulates it and it
is slower than float32. Measured on a machine without them (AMD EPYC, AVX2 only,
2026-12-03): a 2000 × 3082 × 2000 matmul took 445–478 ms in bfloat16 against 397–420 ms in
float32. float16 (`mixed_float16`) is for GPUs; CPUs emulate it too.

The training still runs as asked: this only warns, at the start of a run.
"""

from typing import FrozenSet, Optional

BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str) -> Optional[FrozenSet[str]]:
  """The instruction-set flags of the first processor in /proc/cpuinfo's text, or None if
  the text has no `flags` line (another OS, another architecture's format)."""
  for line in cpuinfo.splitlines():
    key, sep, value = line.partition(":")
    if sep and key.strip() == "flags":
      return frozenset(value.split())
  return None


def read_cpu_flags(path: str = CPUINFO) -> Optional[FrozenSet[str]]:
  """`cpu_flags` of the file at `path`; None if it cannot be read."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return cpu_flags(f.read())
  except OSError:
    return None


def precision_warning(precision: str, products: str, flags: Optional[FrozenSet[str]],
                      has_gpu: bool) -> Optional[str]:
  """A one-line warning if a 16-bit flag will run emulated on this CPU, else None.

  precision: --precision; products: --sinkhorn_products; flags: `read_cpu_flags()` (None:
  unknown, no warning); has_gpu: TensorFlow sees a GPU (then the flags are for it)."""
  if has_gpu or flags is None:
    return None
  if precision == "mixed_float16":
    return ("--precision=mixed_float16 is for GPUs and none is visible: this CPU emulates "
            "float16, slower than --precision=float32")
  asked = [f"--precision={precision}"] if "bfloat16" in precision else []
  asked += [f"--sinkhorn_products={products}"] if "bfloat16" in products else []
  if not asked or flags & BFLOAT16_CPU_FLAGS:
    return None
  return (f"{' and '.join(asked)}: this CPU has no bfloat16 instructions (no "
          f"{' / '.join(sorted(BFLOAT16_CPU_FLAGS))} in {CPUINFO}), so bfloat16 is emulated "
          "and slower than float32 here")
