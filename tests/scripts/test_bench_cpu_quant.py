"""scripts/bench_cpu_quant.py: every kernel it times computes the float32 product, and its section
names every kernel and view (on a tiny model, into a temporary benchmarks page)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import bench_cpu_quant
import benchdoc

from drafttrain.runtime.cpu_quant import fbgemm_available

pytestmark = pytest.mark.skipif(not fbgemm_available(), reason="this PyTorch build has no fbgemm")


@pytest.mark.parametrize("name", list(bench_cpu_quant.kernel_makers()))
def test_each_kernel_computes_the_product(name):
    torch.manual_seed(0)
    weight, x = torch.randn(64, 128) * 0.05, torch.randn(4, 128)
    try:
        got = bench_cpu_quant.kernel_makers()[name](weight)(x).float()
    except RuntimeError as error:  # a generic op this build lacks is not timed either
        pytest.skip(f"{name}: {error}")
    expected = x @ weight.t()
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_section_lists_kernels_and_views(tiny_target, tmp_path, monkeypatch):
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(benchdoc, "DOC", doc)
    monkeypatch.setattr(bench_cpu_quant, "ROWS", (1, 4))
    monkeypatch.setattr(bench_cpu_quant, "CONTEXT", 8)
    assert bench_cpu_quant.main(["--target", str(tiny_target), "--threads", "1", "--repeats", "1"]) == 0
    text = doc.read_text()
    assert text.count("<!-- bench_cpu_quant:start -->") == 1
    for row in ("float32 (default)", "fbgemm int8 (W8A8)", "int8 layers + int8 head", "of the target"):
        assert row in text
