"""What the GPU tests ask the real CUDA driver (cuda-python) outside the code under test."""

from __future__ import annotations

from devmemtcp.memory.cuda import driver


def device_free_bytes() -> int:
    """Free device memory of GPU 0 in bytes (cuMemGetInfo in the primary context)."""
    drv = driver()
    drv.cuInit(0)
    _, dev = drv.cuDeviceGet(0)
    _, ctx = drv.cuDevicePrimaryCtxRetain(dev)
    drv.cuCtxPushCurrent(ctx)
    try:
        err, free, _total = drv.cuMemGetInfo()
        assert int(err) == 0
        return int(free)
    finally:
        drv.cuCtxPopCurrent()
        drv.cuDevicePrimaryCtxRelease(dev)
