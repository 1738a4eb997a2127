"""GPU discovery through NVML (nvidia-ml-py). No NVML, no driver or no GPU is a normal
answer: an empty list, and the worker runs as a CPU node."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_free_bytes: int
    utilization_pct: float | None


def discover() -> list[GpuInfo]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.info("no NVIDIA GPU visible: %s", error)
        return []
    try:
        return [_read(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _read(pynvml: object, index: int) -> GpuInfo:
    nvml = pynvml  # the module, passed in so importing this file never needs it
    handle = nvml.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[attr-defined]
    try:
        utilization: float | None = float(
            nvml.nvmlDeviceGetUtilizationRates(handle).gpu  # type: ignore[attr-defined]
        )
    except nvml.NVMLError:  # type: ignore[attr-defined]
        utilization = None  # not every GPU (or MIG slice) reports it
    name = nvml.nvmlDeviceGetName(handle)  # type: ignore[attr-defined]
    gpu_uuid = nvml.nvmlDeviceGetUUID(handle)  # type: ignore[attr-defined]
    return GpuInfo(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        uuid=gpu_uuid.decode() if isinstance(gpu_uuid, bytes) else str(gpu_uuid),
        memory_total_bytes=int(memory.total),
        memory_free_bytes=int(memory.free),
        utilization_pct=utilization,
    )


def find(index: int | None) -> GpuInfo | None:
    if index is None:
        return None
    return next((gpu for gpu in discover() if gpu.index == index), None)


if __name__ == "__main__":  # `python -m workers.gpu`: what this host's NVML reports
    import json
    from dataclasses import asdict

    print(json.dumps([asdict(gpu) for gpu in discover()], indent=2))
