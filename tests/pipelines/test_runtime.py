"""`omnivox.pipelines.runtime`: the run-time state a pipeline keeps between runs, and the moved `GraphedCall`."""

import importlib
import sys

import pytest
import torch

from omnivox.pipelines.runtime import GraphedCall, RunContext


def test_worker_is_one_thread_kept_between_calls():
    context = RunContext()
    worker = context.worker()
    assert context.worker() is worker
    assert worker.submit(lambda: 6 * 7).result() == 42
    assert RunContext().worker() is not worker  # one per pipeline, not per process


def test_graphs_are_kept_per_role_on_the_cpu_too():
    context = RunContext()
    network = GraphedCall(lambda x: 2 * x)
    assert network(torch.ones(2)).tolist() == [2.0, 2.0]  # CPU tensors: an ordinary call
    context.keep_graphs("shape_slat_flow_model", network)
    assert context.captured_roles == {"shape_slat_flow_model"} and context.pool_keeper == network.captured_graphs()


def test_pipelines_hold_a_run_context(tiny_weights):
    from omnivox.pipelines.image_to_3d import ImageTo3DPipeline

    first = ImageTo3DPipeline.from_pretrained(tiny_weights, device="cpu")
    second = ImageTo3DPipeline.from_pretrained(tiny_weights, device="cpu")
    assert isinstance(first.runtime, RunContext) and first.runtime is not second.runtime
    assert not first.cuda_graphs  # a setting of the pipeline, not run-time state


def test_deprecated_module_forwards():
    sys.modules.pop("omnivox.models.cuda_graphs", None)
    with pytest.warns(DeprecationWarning, match="omnivox.pipelines.runtime"):
        old = importlib.import_module("omnivox.models.cuda_graphs")
    assert old.GraphedCall is GraphedCall
