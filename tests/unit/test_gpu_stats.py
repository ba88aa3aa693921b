import pytest
import torch

from llmserve.model_worker.gpu_stats import GpuStats
from llmserve.v1 import events_pb2

pytestmark = pytest.mark.unit


def test_a_cpu_worker_reports_no_gpu():
    beat = events_pb2.Heartbeat(instance_id="w")
    GpuStats(torch.device("cpu")).fill(beat)
    assert (beat.gpu_utilization_percent, beat.gpu_memory_used_bytes, beat.gpu_memory_total_bytes) == (0, 0, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_worker_reports_its_memory():
    pytest.importorskip("pynvml")
    beat = events_pb2.Heartbeat(instance_id="w")
    GpuStats(torch.device("cuda:0")).fill(beat)
    assert beat.gpu_memory_total_bytes > beat.gpu_memory_used_bytes > 0
