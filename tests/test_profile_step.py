"""benchmarks/profile_step.py on a tiny BERT: a real jax.profiler trace of ftjax's train
step, classified by phase and op family from the optimised HLO."""

from pathlib import Path

import pytest

from tests.helpers.modules import load_module
from tests.helpers.tiny import make_checkpoint

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step.py"


def test_profile_classifies_every_phase_and_the_main_families(tmp_path):
    profile_step = load_module(SCRIPT)
    model = make_checkpoint(tmp_path / "model")
    result = profile_step.profile(str(model), "full", steps=2, length=16, dropout=0.1)
    families = {op["family"] for op in result["ops"] if op["ms"] > 0}
    assert {op["phase"] for op in result["ops"]} == {"forward", "backward", "update"}
    assert {"dense matmuls", "layer norms", "dropout", "optimizer (AdamW, clipping)"} <= families
    assert set(families) <= set(profile_step.FAMILIES)
    assert result["flops"] > 0 and result["step_ms"] > 0 and result["matmul_peak_gflops"] > 0
    assert result["matmul_peak_bf16_gflops"] > 0
    table = profile_step.report(result)
    assert "| **all** |" in table and "GFLOP (XLA's cost analysis)" in table


def test_hlo_parser_reads_fusions_and_their_name_stacks():
    profile_step = load_module(SCRIPT)
    text = """HloModule m
%fused_computation.1 (p0: f32[4,8], p1: f32[8,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  ROOT %dot.1 = f32[4,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/transpose(jvp(BertModel))/encoder/layer_0/mlp/output/dot_general"}
}
ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  ROOT %ynn_fusion.3 = f32[4,8]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(step)/add"}
}
"""  # noqa: E501
    instructions, computations = profile_step.parse_hlo(text)
    fusion = instructions["ynn_fusion.3"]
    assert profile_step.family_of(fusion, computations) == "dense matmuls"
    body = profile_step.fused(fusion, computations)
    assert profile_step.phase_of([i.op_name for i in body]) == "backward"
    table = profile_step.breakdown(text, {"ynn_fusion.3": 3000.0, "ThunkExecutor": 9e9}, 3)
    assert table == {("backward", "dense matmuls"): 1.0}
