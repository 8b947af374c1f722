"""Tests for train/hardware.py: the cpuinfo parser and when a 16-bit flag warns."""

import tempfile

from absl.testing import absltest

from dp_sinkhorn_tf.train import hardware

# Abridged /proc/cpuinfo of the two machines this project ran on (2026-12-03): two
# processors each; only the first's flags are read.
ZEN3_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx f16c avx2 fma bmi2
processor\t: 1
flags\t\t: fpu sse2 avx f16c avx2 fma bmi2
"""
AVX512_BF16 = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
SAPPHIRE_RAPIDS = "flags : avx512f amx_bf16 amx_tile amx_int8\n"


class CpuFlagsTest(absltest.TestCase):

  def test_parses_the_first_flags_line(self):
    self.assertEqual(hardware.cpu_flags(ZEN3_AVX2),
                     frozenset({"fpu", "sse2", "avx", "f16c", "avx2", "fma", "bmi2"}))
    self.assertIn("avx512_bf16", hardware.cpu_flags(AVX512_BF16))

  def test_no_flags_line_is_unknown(self):
    self.assertIsNone(hardware.cpu_flags("Processor\t: ARMv7\nFeatures\t: neon\n"))
    self.assertIsNone(hardware.cpu_flags(""))

  def test_unreadable_file_is_unknown(self):
    with tempfile.TemporaryDirectory() as directory:  # a directory: open() raises OSError
      self.assertIsNone(hardware.read_cpu_flags(directory))
      self.assertIsNone(hardware.read_cpu_flags(directory + "/missing"))


class PrecisionWarningTest(absltest.TestCase):

  def test_bfloat16_without_bfloat16_instructions_warns_naming_each_flag(self):
    flags = hardware.cpu_flags(ZEN3_AVX2)
    self.assertEqual(
        hardware.precision_warning("bfloat16_convs", "bfloat16_all", flags, has_gpu=False),
        "--precision=bfloat16_convs and --sinkhorn_products=bfloat16_all: this CPU has no "
        "bfloat16 instructions (no amx_bf16 / avx512_bf16 in /proc/cpuinfo), so bfloat16 "
        "is emulated and slower than float32 here")
    self.assertIn("--precision=mixed_bfloat16:",
                  hardware.precision_warning("mixed_bfloat16", "float32", flags, False))
    self.assertIn("--sinkhorn_products=bfloat16:",
                  hardware.precision_warning("float32", "bfloat16", flags, False))

  def test_no_warning_where_bfloat16_has_hardware_or_is_not_asked(self):
    for text in (AVX512_BF16, SAPPHIRE_RAPIDS):
      self.assertIsNone(hardware.precision_warning(
          "mixed_bfloat16", "bfloat16", hardware.cpu_flags(text), False))
    self.assertIsNone(hardware.precision_warning(
        "float32", "float32", hardware.cpu_flags(ZEN3_AVX2), False))

  def test_float16_warns_on_any_cpu_but_not_with_a_gpu(self):
    self.assertIn("--precision=mixed_float16 is for GPUs", hardware.precision_warning(
        "mixed_float16", "float32", hardware.cpu_flags(SAPPHIRE_RAPIDS), False))
    for precision in ("mixed_float16", "mixed_bfloat16"):
      self.assertIsNone(hardware.precision_warning(
          precision, "bfloat16", hardware.cpu_flags(ZEN3_AVX2), has_gpu=True))

  def test_unknown_cpu_does_not_warn(self):
    self.assertIsNone(hardware.precision_warning("mixed_bfloat16", "float32", None, False))


if __name__ == "__main__":
  absltest.main()
