"""doctor's GPU-memory checks: cuda-driver, cuda-dmabuf, kernel-dmabuf, iommu.

On this machine (no NVIDIA driver) the CUDA checks say "unknown / skip" with
their fix; the other cases run over files in a temporary directory and the
driver-API test double of tests/unit/memory/fake_cuda.py."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest

from devmemtcp import doctor
from unit.memory.fake_cuda import FakeDriver

OPEN = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  Release Build  (builder@host)\n"
PROP = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"


def shape(c: doctor.Check) -> None:
    assert c.status in ("pass", "fail", "unknown") and c.detail
    assert (c.fix is None) == (c.status == "pass")


@pytest.mark.skipif(os.path.exists("/dev/nvidia0"), reason="this machine has an NVIDIA GPU")
def test_no_nvidia_driver_is_unknown_skip() -> None:
    checks = doctor._cuda_checks()
    assert [c.name for c in checks] == ["cuda-driver", "cuda-dmabuf"]
    for c in checks:
        shape(c)
        assert c.status == "unknown" and c.detail.startswith("skip: no NVIDIA driver")
        assert "--memory cuda" in (c.fix or "")


def test_open_modules_and_dmabuf_pass(tmp_path: Path) -> None:
    v = tmp_path / "version"
    v.write_text(OPEN)
    drv, dmabuf = doctor._cuda_checks(str(v), str(tmp_path / "nvidia0"), FakeDriver(version=12040))
    assert drv.status == "pass" and "550.54.14 (open kernel modules), CUDA 12.4, 1 GPU(s)" in drv.detail
    assert dmabuf.status == "pass" and "Fake GPU" in dmabuf.detail
    shape(drv)
    shape(dmabuf)


def test_proprietary_modules_fail_with_the_fix(tmp_path: Path) -> None:
    v = tmp_path / "version"
    v.write_text(PROP)
    drv, dmabuf = doctor._cuda_checks(str(v), str(tmp_path / "nvidia0"), FakeDriver(dmabuf_supported=0))
    assert drv.status == "pass" and "proprietary kernel modules" in drv.detail
    assert dmabuf.status == "fail" and "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0" in dmabuf.detail
    assert "nvidia-open" in (dmabuf.fix or "")


def test_old_cuda_driver_fails(tmp_path: Path) -> None:
    v = tmp_path / "version"
    v.write_text(OPEN)
    _, dmabuf = doctor._cuda_checks(str(v), str(tmp_path / "nvidia0"), FakeDriver(version=11040))
    assert dmabuf.status == "fail" and "11.7" in dmabuf.detail


def test_driver_present_but_no_cuda_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.driver", "cuda.cuda"):
        monkeypatch.setitem(sys.modules, name, None)
    v = tmp_path / "version"
    v.write_text(OPEN)
    drv, dmabuf = doctor._cuda_checks(str(v), str(tmp_path / "nvidia0"))
    assert drv.status == "unknown" and "cuda-python is not installed" in drv.detail
    assert dmabuf.status == "unknown" and "devmemtcp[cuda]" in (dmabuf.fix or "")


def test_kernel_dmabuf_from_config(tmp_path: Path) -> None:
    good = tmp_path / "config.gz"
    with gzip.open(good, "wt") as f:
        f.write("CONFIG_NET_DEVMEM=y\nCONFIG_DMA_SHARED_BUFFER=y\n")
    c = doctor._kernel_dmabuf_check(None, (str(good),))
    assert c.status == "pass" and str(good) in c.detail
    bad = tmp_path / "config-%s"
    (tmp_path / f"config-{os.uname().release}").write_text("# CONFIG_DMA_SHARED_BUFFER is not set\n")
    c = doctor._kernel_dmabuf_check(None, (str(tmp_path / "absent.gz"), str(bad)))
    assert c.status == "fail" and "CONFIG_DMA_SHARED_BUFFER" in (c.fix or "")
    c = doctor._kernel_dmabuf_check({"bind-rx"}, (str(tmp_path / "absent"),))
    assert c.status == "pass" and "CONFIG_NET_DEVMEM" in c.detail
    shape(c)


def test_kernel_dmabuf_on_this_machine() -> None:
    c = doctor._kernel_dmabuf_check(None)
    shape(c)
    if os.path.exists("/proc/config.gz"):
        assert c.status in ("pass", "fail") and "/proc/config.gz" in c.detail


def test_iommu_states(tmp_path: Path) -> None:
    assert doctor._iommu_check(str(tmp_path)).status == "unknown"
    (tmp_path / "class" / "iommu").mkdir(parents=True)
    c = doctor._iommu_check(str(tmp_path))
    assert c.status == "pass" and "no IOMMU active" in c.detail
    (tmp_path / "class" / "iommu" / "dmar0").mkdir()
    g = tmp_path / "kernel" / "iommu_groups" / "0"
    g.mkdir(parents=True)
    (g / "type").write_text("DMA-FQ\n")
    c = doctor._iommu_check(str(tmp_path))
    assert c.status == "unknown" and "DMA-FQ" in c.detail and "iommu=pt" in (c.fix or "")
    (g / "type").write_text("identity\n")
    c = doctor._iommu_check(str(tmp_path))
    assert c.status == "pass" and "passthrough" in c.detail
    shape(doctor._iommu_check())
