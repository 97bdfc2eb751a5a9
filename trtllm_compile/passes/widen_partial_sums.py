"""Every all-reduce of a half-precision tensor-parallel step graph sums fp32 values, rounded once after the sum.

One GPU rounds each output of a GEMM once, from its fp32 accumulation. Sharded by rows (attention out, MLP
down), every rank would round its partial sum to bf16 and the all-reduce would round their sum again: about
half of the outputs then differ from one GPU's by an ulp, and on a model with flat logits the greedy tokens part
within a few steps. Here the row-parallel GEMM keeps its fp32 sums (`trtllm.linear(..., out_dtype=float32)`),
the all-reduce adds them in fp32, and the result is rounded to the model's dtype once, as one GPU rounds it;
what is left between TP=1 and TP=N is the order of the fp32 additions. The vocab-parallel embedding's
all-reduce (one rank's row plus zeros: exact either way) is widened too, so a graph's all-reduces share one
dtype and one peer buffer. The cost is twice the all-reduce bytes.

  trtllm.linear(x, W_rows) -> all_reduce -> wait [-> + bias] -> users
    =>  trtllm.linear(x, W_rows, out_dtype=float32) -> all_reduce -> wait [-> + bias] -> to(bf16) -> users

A LOWER pass (the runtime's step graph, after lower_linear made the trtllm.linear calls); the TensorRT target's
engines keep the model's dtype (their GEMMs output it).
"""

from __future__ import annotations

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, constant_of, is_op, val
from trtllm_compile.parallel.collectives import c10d
from trtllm_compile.passes.registry import Stage, register_pass

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _widen(node: torch.fx.Node) -> None:
    node.meta["val"] = val(node).to(torch.float32)


@register_pass(Stage.LOWER)
def widen_partial_sums(gm: torch.fx.GraphModule, config) -> int:
    """Sum all-reduces of fp16/bf16 values in fp32 (row-parallel GEMMs keep their fp32 sums); round once after."""
    count = 0
    for reduce in [n for n in gm.graph.nodes if is_op(n, c10d.all_reduce.default) and n.args[1] == "sum"]:
        source = reduce.args[0]
        dtype = val(source).dtype
        if dtype not in HALF_DTYPES:
            continue
        if is_op(source, torch.ops.trtllm.linear.default) and len(source.users) == 1:
            source.update_kwarg("out_dtype", torch.float32)
            _widen(source)
        else:
            with gm.graph.inserting_before(reduce):
                wide = gm.graph.call_function(aten._to_copy.default, (source,), {"dtype": torch.float32})
            wide.meta["val"] = val(source).to(torch.float32)
            reduce.replace_input_with(source, wide)
        _widen(reduce)
        last = reduce
        for user in list(last.users):  # the wait_tensor, then the row-parallel bias (added in fp32) if any
            if is_op(user, c10d.wait_tensor.default):
                _widen(user)
                last = user
        bias_add = next(iter(last.users)) if len(last.users) == 1 else None
        if is_op(bias_add, aten.add.Tensor) and constant_of(gm, bias_add.args[1]) is not None:  # row_parallel's
            _widen(bias_add)
            last = bias_add
        users = list(last.users)
        with gm.graph.inserting_after(last):
            narrow = gm.graph.call_function(aten._to_copy.default, (last,), {"dtype": dtype})
        narrow.meta["val"] = val(last).to(dtype)
        for user in users:
            user.replace_input_with(last, narrow)
        count += 1
    gm.recompile()
    return count
