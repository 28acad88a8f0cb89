"""Can this NIC do devmem TCP, and what is missing? (``devmemtcp doctor``)

:func:`diagnose` runs every prerequisite of devmem RX and TX for one
interface against the running kernel and returns a :class:`DoctorReport`:
one :class:`Check` per prerequisite, each "pass" / "fail" / "unknown" with
what was found (in the kernel's own words where the kernel said something)
and how to fix it.

The queue-management probe is a bind-rx whose fd is a memfd (not a dma-buf):
the kernel checks the device first (netdev_nl_bind_rx_doit: unknown device
ENODEV, no queue management API EOPNOTSUPP pointing at ``ifindex``) and only
then the fd (dma_buf_get refuses a memfd), so a capable driver fails on the
fd and nothing is ever bound. bind-tx is probed the same way (EOPNOTSUPP
"Driver does not support netmem TX" when the driver lacks netmem TX).
"""

from __future__ import annotations

import errno as _errno
import gzip
import os
import re
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from devmemtcp import abi
from devmemtcp.errors import DevmemError, NetlinkError
from devmemtcp.host import ifaces
from devmemtcp.netlink import ethtool
from devmemtcp.netlink.netdev import NetdevClient, bind_rx, bind_tx

Status = Literal["pass", "fail", "unknown"]

#: checks that must not fail for devmem RX to be possible on the interface
RX_REQUIRED = ("kernel-bind-rx", "cap-net-admin", "queue-management-api", "header-split", "hds-thresh",
               "ntuple", "rss", "rx-queues")
#: checks that must not fail for devmem TX
TX_REQUIRED = ("kernel-bind-tx", "netmem-tx")


@dataclass(frozen=True)
class Check:
    """One prerequisite: ``name`` (stable id), ``status`` ("pass"/"fail"/
    "unknown"), ``detail`` (what was found), ``fix`` (what to do; None on pass)."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass
class DoctorReport:
    """Result of :func:`diagnose`: ``rx_supported`` is True only when the
    queue-management probe passed and no RX prerequisite failed; likewise
    ``tx_supported`` for TX."""

    ifname: str
    rx_supported: bool
    tx_supported: bool
    checks: list[Check] = field(default_factory=list)

    def check(self, name: str) -> Check:
        """The check called ``name`` (KeyError if absent)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """{"ifname", "rx_supported", "tx_supported", "checks": [{"name", "status", "detail", "fix"}]}."""
        return {"ifname": self.ifname, "rx_supported": self.rx_supported,
                "tx_supported": self.tx_supported, "checks": [asdict(c) for c in self.checks]}


def errno_name(err: int) -> str:
    """Symbolic errno as the kernel sources spell it (95 is EOPNOTSUPP, not
    glibc's alias ENOTSUP)."""
    if err == _errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return _errno.errorcode.get(err, str(err))


def kernel_words(exc: NetlinkError) -> str:
    """The kernel's answer as text: ``EOPNOTSUPP (Operation not supported)``,
    its extack message in quotes and the attribute it pointed at."""
    text = f"{errno_name(exc.errno)} ({os.strerror(exc.errno)})"
    if exc.extack:
        text += f' "{exc.extack}"'
    if exc.bad_attr is not None:
        text += f", pointing at attribute '{exc.bad_attr}'"
    return text


def has_cap_net_admin() -> bool:
    """Whether this process's effective capability set holds CAP_NET_ADMIN (/proc/self/status CapEff)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> abi.CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _memfd(size: int = 1 << 20) -> int:
    fd = os.memfd_create("devmemtcp-doctor-probe", abi.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ops_checks(ops: set[str] | None, err: DevmemError | None) -> list[Check]:
    if ops is None:
        detail = f"cannot read the netdev family: {err}" if err else "cannot read the netdev family"
        fix = "use Linux >= 6.12 built with CONFIG_NET_DEVMEM=y"
        return [Check(n, "fail", detail, fix) for n in ("kernel-bind-rx", "kernel-bind-tx",
                                                         "kernel-queue-create")]
    table = (
        ("kernel-bind-rx", "bind-rx", "devmem RX", "use Linux >= 6.12 built with CONFIG_NET_DEVMEM=y"),
        ("kernel-bind-tx", "bind-tx", "devmem TX", "use Linux >= 6.16 for devmem TX"),
        ("kernel-queue-create", "queue-create", "RX queue leasing to netkit",
         "use Linux >= 7.1 to lease queues to netkit containers (optional)"),
    )
    out = []
    for name, op, what, fix in table:
        if op in ops:
            out.append(Check(name, "pass", f"the netdev family lists the {op} op ({what})"))
        else:
            detail = f"the netdev family has no {op} op: no {what} in this kernel"
            out.append(Check(name, "fail", detail, fix))
    return out


def _probe_rx(ifname: str, ifindex: int, driver: str | None, can_admin: bool) -> Check:
    name = "queue-management-api"
    who = f"driver {driver}" if driver else ifname
    fd = _memfd()
    try:
        binding = bind_rx(ifindex, fd, [0])
    except NetlinkError as exc:
        words = kernel_words(exc)
        if exc.errno in (_errno.EPERM, _errno.EACCES):
            return Check(name, "unknown", f"bind-rx probe refused: {words}",
                         "run devmemtcp doctor as root (bind-rx needs CAP_NET_ADMIN)")
        if exc.errno == _errno.EOPNOTSUPP and (exc.bad_attr == "ifindex" or not exc.extack):
            return Check(name, "fail",
                         f"{who} has no queue management API: the kernel answered bind-rx with {words}",
                         "devmem RX needs a NIC whose driver implements the queue management API "
                         "(gve, mlx5, bnxt, fbnic); or use the emulated backend (--backend emulated)")
        if exc.errno == _errno.EOPNOTSUPP:
            return Check(name, "fail", f"the kernel refused bind-rx on {ifname}: {words}",
                         "use a DMA-capable NIC whose driver supports devmem RX")
        if exc.errno == _errno.EEXIST and exc.extack and "xdp" in exc.extack.lower():
            return Check(name, "fail", f"the kernel refused bind-rx on {ifname}: {words}",
                         f"detach the XDP program: ip link set dev {ifname} xdp off")
        if exc.errno == _errno.ENODEV:
            return Check(name, "fail", f"the kernel does not know ifindex {ifindex}: {words}",
                         "check the interface name and namespace")
        return Check(name, "pass",
                     f"{who} accepted the device checks of bind-rx; the probe (a memfd, not a dma-buf) "
                     f"then failed as intended: {words}")
    finally:
        os.close(fd)
    # A memfd is never a dma-buf, so this is not expected; unbind at once if it happens.
    binding.close()
    return Check(name, "pass", f"{who} accepted bind-rx (binding {binding.id}, closed again at once)")


def _probe_tx(ifname: str, ifindex: int, driver: str | None) -> Check:
    name = "netmem-tx"
    who = f"driver {driver}" if driver else ifname
    fd = _memfd()
    try:
        binding = bind_tx(ifindex, fd)
    except NetlinkError as exc:
        words = kernel_words(exc)
        if exc.errno == _errno.EOPNOTSUPP:
            return Check(name, "fail", f"{who} cannot send from device memory: the kernel answered "
                         f"bind-tx with {words}",
                         "devmem TX needs gve (DQO-RDA), mlx5, bnxt or fbnic, or a netkit device with a "
                         "leased queue")
        if exc.errno in (_errno.EPERM, _errno.EACCES):
            return Check(name, "unknown", f"bind-tx probe refused: {words}", "run as root")
        return Check(name, "pass", f"{who} accepted the device checks of bind-tx; the probe (a memfd) "
                     f"then failed as intended: {words}")
    finally:
        os.close(fd)
    binding.close()
    return Check(name, "pass", f"{who} accepted bind-tx (binding {binding.id}, closed again at once)")


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except NetlinkError as exc:
        return Check(name, "unknown", f"the kernel refused the query: {kernel_words(exc)}",
                     exc.hint or "run as root and retry")
    except (DevmemError, OSError) as exc:
        return Check(name, "unknown", f"could not check: {exc}", "run as root and retry")


def _rings_checks(ifname: str) -> list[Check]:
    try:
        rings = ethtool.get_rings(ifname)
    except NetlinkError as exc:
        detail = f"ethtool rings-get refused: {kernel_words(exc)}"
        if exc.errno == _errno.EOPNOTSUPP:
            fix = "the driver exposes no ring settings, hence no header split: use a devmem-capable NIC"
            return [Check("header-split", "fail", detail, fix), Check("hds-thresh", "fail", detail, fix)]
        return [Check("header-split", "unknown", detail, exc.hint), Check("hds-thresh", "unknown", detail,
                                                                         exc.hint)]
    if rings.tcp_data_split == "enabled":
        split = Check("header-split", "pass", "tcp-data-split is enabled")
    elif rings.tcp_data_split == "disabled":
        split = Check("header-split", "fail", "tcp-data-split is disabled (the kernel refuses bind-rx: "
                      "\"tcp-data-split is disabled\")",
                      f"ethtool -G {ifname} tcp-data-split on (devmemtcp setup does it and undoes it)")
    else:
        split = Check("header-split", "fail", "the driver does not report tcp-data-split: it has no "
                      "header split, which devmem RX needs",
                      "use a NIC with header split (gve, mlx5, bnxt, fbnic)")
    if rings.hds_thresh is None:
        hds = Check("hds-thresh", "fail", "the driver does not report hds-thresh (the header/data split "
                    "threshold)", "use a NIC whose driver reports hds-thresh (Linux >= 6.13 drivers)")
    elif rings.hds_thresh == 0:
        hds = Check("hds-thresh", "pass", f"hds-thresh is 0 (max {rings.hds_thresh_max})")
    else:
        hds = Check("hds-thresh", "fail", f"hds-thresh is {rings.hds_thresh}, devmem RX needs 0",
                    f"ethtool -G {ifname} hds-thresh 0 (devmemtcp setup does it and undoes it)")
    return [split, hds]


def _ntuple_check(ifname: str) -> Check:
    state = ethtool.ntuple_enabled(ifname)
    if state is True:
        return Check("ntuple", "pass", "rx-ntuple-filter is on (flows can be steered to a queue)")
    if state is False:
        return Check("ntuple", "fail", "rx-ntuple-filter is supported but off",
                     f"ethtool -K {ifname} ntuple on")
    return Check("ntuple", "fail", "the driver has no ntuple flow steering (rx-ntuple-filter not in its "
                 "hardware features): the devmem flow cannot be steered to a devmem queue",
                 "use a NIC with ntuple filters (gve, mlx5, bnxt, fbnic)")


def _rss_check(ifname: str) -> Check:
    try:
        table = ethtool.get_rss_indir(ifname)
    except NetlinkError as exc:
        if exc.errno == _errno.EOPNOTSUPP:
            return Check("rss", "fail", f"no RSS indirection table: ethtool rss-get answered "
                         f"{kernel_words(exc)}; other flows cannot be kept off the devmem queues",
                         "use a NIC with RSS (ethtool -X)")
        raise
    if not table:
        return Check("rss", "fail", "the driver reports no RSS indirection table: other flows cannot "
                     "be kept off the devmem queues", "use a NIC with RSS (ethtool -X)")
    used = sorted(set(table))
    return Check("rss", "pass", f"RSS indirection table of {len(table)} entries over queues {used}")


def _rx_queues_check(ifname: str) -> Check:
    n = ethtool.rx_queue_count(ifname)
    if n >= 2:
        return Check("rx-queues", "pass", f"{n} RX queues (one or more for devmem, the rest for other "
                     "traffic)")
    return Check("rx-queues", "fail", f"{n} RX queue: devmem needs a queue of its own besides the "
                 "queues other traffic uses", f"ethtool -L {ifname} combined N (N >= 2), if the NIC allows")


def _udmabuf_check() -> Check:
    if os.path.exists("/dev/udmabuf"):
        limit = None
        try:
            with open(abi.UDMABUF_SIZE_LIMIT_PARAM) as f:
                limit = int(f.read().strip())
        except (OSError, ValueError):
            pass
        extra = f", size limit {limit} MiB per buffer ({abi.UDMABUF_SIZE_LIMIT_PARAM})" if limit else ""
        return Check("udmabuf", "pass", f"/dev/udmabuf is present{extra}")
    return Check("udmabuf", "fail", "/dev/udmabuf is absent: no host-memory dma-bufs (a GPU dma-buf "
                 "still works)", "modprobe udmabuf (CONFIG_UDMABUF), or use GPU memory")


NVIDIA_VERSION = "/proc/driver/nvidia/version"
NVIDIA_DEVICE = "/dev/nvidia0"
#: kernel configuration sources, first readable one wins (%s: the release)
KERNEL_CONFIGS = ("/proc/config.gz", "/boot/config-%s")
#: CUDA 11.7: the first driver API with dma-buf export (cuMemGetHandleForAddressRange)
CUDA_DMABUF_MIN = (11, 7)
_NO_GPU_FIX = ("needed only for --memory cuda: install the NVIDIA driver (open kernel modules) on a GPU "
               "machine")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cuda_checks(version_path: str = NVIDIA_VERSION, device_path: str = NVIDIA_DEVICE,
                 drv: Any | None = None) -> list[Check]:
    """``cuda-driver`` (NVIDIA kernel driver and CUDA driver API) and
    ``cuda-dmabuf`` (GPU 0 can export dma-bufs: CUDA >= 11.7 and
    CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED). Both "unknown" on a machine with
    no NVIDIA driver: they matter only for --memory cuda."""
    from devmemtcp.memory import cuda as mcuda

    text = _read(version_path)
    if text is None and not os.path.exists(device_path):
        why = f"skip: no NVIDIA driver ({version_path} and {device_path} absent)"
        return [Check("cuda-driver", "unknown", why, _NO_GPU_FIX),
                Check("cuda-dmabuf", "unknown", why, _NO_GPU_FIX)]
    first = (text or "").splitlines()[0] if text else ""
    modules = "open kernel modules" if "Open Kernel Module" in first else \
        "proprietary kernel modules" if first else "kernel modules of unknown kind"
    m = re.search(r"\s(\d+\.\d+(?:\.\d+)?)\s", first)
    kver = m.group(1) if m else "version unknown"
    try:
        info = mcuda.probe(0, drv)
    except DevmemError as exc:
        detail = f"NVIDIA driver {kver} ({modules}), but the CUDA driver API is unusable: {exc.message}"
        fix = exc.hint or "check nvidia-smi"
        return [Check("cuda-driver", "fail" if "cuda-python" not in exc.message else "unknown", detail, fix),
                Check("cuda-dmabuf", "unknown", "not probed: " + exc.message, fix)]
    driver = Check("cuda-driver", "pass", f"NVIDIA driver {kver} ({modules}), CUDA {info['driver']}, "
                   f"{info['count']} GPU(s)")
    major, minor = (int(x) for x in str(info["driver"]).split("."))
    name = f"GPU 0 ({info['name']})"
    if (major, minor) < CUDA_DMABUF_MIN:
        dmabuf = Check("cuda-dmabuf", "fail", f"the driver supports CUDA {info['driver']}: dma-buf export "
                       "needs 11.7 or later",
                       "upgrade the NVIDIA driver (R515 or later, open kernel modules)")
    elif info["dmabuf_supported"] is None:
        dmabuf = Check("cuda-dmabuf", "unknown", "this cuda-python does not know "
                       "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED", "pip install -U cuda-python")
    elif info["dmabuf_supported"]:
        dmabuf = Check("cuda-dmabuf", "pass", f"{name} can export dma-bufs "
                       "(CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 1)")
    else:
        dmabuf = Check("cuda-dmabuf", "fail", f"{name} cannot export dma-bufs: "
                       f"CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0 with the {modules}",
                       "install the NVIDIA open kernel modules (nvidia-open, R515 or later)")
    return [driver, dmabuf]


def _kernel_config(release: str, paths: tuple[str, ...] = KERNEL_CONFIGS) -> tuple[str, str] | None:
    """(text, source) of the running kernel's configuration, or None."""
    for p in paths:
        path = p % release if "%s" in p else p
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rt") as f:
                    return f.read(), path
            with open(path) as f:
                return f.read(), path
        except OSError:
            continue
    return None


def _kernel_dmabuf_check(ops: set[str] | None, paths: tuple[str, ...] = KERNEL_CONFIGS) -> Check:
    """``kernel-dmabuf``: the kernel has dma-buf support (CONFIG_DMA_SHARED_BUFFER),
    which bind-rx needs to take the fd (dma_buf_get, net/core/devmem.c)."""
    name = "kernel-dmabuf"
    conf = _kernel_config(os.uname().release, paths)
    if conf is not None:
        text, src = conf
        if re.search(r"^CONFIG_DMA_SHARED_BUFFER=y$", text, re.M):
            return Check(name, "pass", f"CONFIG_DMA_SHARED_BUFFER=y ({src})")
        return Check(name, "fail", f"the kernel is built without dma-buf support (CONFIG_DMA_SHARED_BUFFER "
                     f"not =y in {src})", "use a kernel with CONFIG_DMA_SHARED_BUFFER=y (CONFIG_NET_DEVMEM "
                     "selects it)")
    if ops is not None and "bind-rx" in ops:
        return Check(name, "pass", "the kernel has the bind-rx op, and CONFIG_NET_DEVMEM depends on "
                     "CONFIG_DMA_SHARED_BUFFER")
    if os.path.exists("/sys/kernel/dmabuf") or os.path.exists("/dev/udmabuf"):
        return Check(name, "pass", "dma-buf support present (/sys/kernel/dmabuf or /dev/udmabuf exists)")
    return Check(name, "unknown", "cannot tell: no kernel config (/proc/config.gz, /boot/config-*) and no "
                 "dma-buf file in /sys", "check CONFIG_DMA_SHARED_BUFFER=y in the kernel's configuration")


def _iommu_check(sys_root: str = "/sys") -> Check:
    """``iommu``: peer-to-peer DMA from the NIC into GPU memory; with a
    translating IOMMU it depends on the platform (ACS, ATS), passthrough or
    no IOMMU is the configuration GPUDirect set-ups use."""
    name = "iommu"
    units = sorted(os.listdir(os.path.join(sys_root, "class", "iommu"))) \
        if os.path.isdir(os.path.join(sys_root, "class", "iommu")) else None
    if units is None:
        return Check(name, "unknown", f"{sys_root}/class/iommu is absent: IOMMU state unknown",
                     "check dmesg for DMAR/AMD-Vi and the iommu= boot parameter")
    if not units:
        return Check(name, "pass", f"no IOMMU active ({sys_root}/class/iommu is empty): devices DMA to "
                     "physical addresses")
    groups = os.path.join(sys_root, "kernel", "iommu_groups")
    types: set[str] = set()
    if os.path.isdir(groups):
        for g in os.listdir(groups):
            t = _read(os.path.join(groups, g, "type"))
            if t:
                types.add(t.strip())
    if types and types <= {"identity"}:
        return Check(name, "pass", f"IOMMU {', '.join(units)} in passthrough (identity domains)")
    what = ", ".join(sorted(types)) or "unknown domain type"
    return Check(name, "unknown", f"IOMMU {', '.join(units)} translates DMA ({what}): NIC-to-GPU "
                 "peer-to-peer DMA then depends on the platform (ACS, ATS)",
                 "if a GPU dma-buf binds but traffic stalls or faults, boot with iommu=pt (passthrough)")


def diagnose(ifname: str) -> DoctorReport:
    """Check every devmem RX/TX prerequisite of ``ifname`` in the current
    network namespace (enter another with :func:`devmemtcp.host.netns.enter`).

    Raises DevmemError when ``ifname`` does not exist. Never binds anything
    for longer than the probe call itself (see the module docstring).
    """
    ifindex = ifaces.ifindex(ifname)
    checks: list[Check] = []
    ops: set[str] | None = None
    ops_err: DevmemError | None = None
    try:
        with NetdevClient() as client:
            ops = client.ops()
    except DevmemError as exc:
        ops_err = exc
    checks += _ops_checks(ops, ops_err)
    admin = has_cap_net_admin()
    checks.append(Check("cap-net-admin", "pass", "this process has CAP_NET_ADMIN") if admin else
                  Check("cap-net-admin", "fail", "this process lacks CAP_NET_ADMIN (bind-rx and ethtool "
                        "changes need it)", "run as root, or grant CAP_NET_ADMIN"))
    try:
        driver = ethtool.driver_name(ifname)
    except DevmemError:
        driver = None
    if ops is not None and "bind-rx" in ops:
        checks.append(_guard("queue-management-api", lambda: _probe_rx(ifname, ifindex, driver, admin)))
    else:
        checks.append(Check("queue-management-api", "unknown", "not probed: the kernel has no bind-rx op",
                            "use Linux >= 6.12 built with CONFIG_NET_DEVMEM=y"))
    if ops is not None and "bind-tx" in ops:
        checks.append(_guard("netmem-tx", lambda: _probe_tx(ifname, ifindex, driver)))
    else:
        checks.append(Check("netmem-tx", "unknown", "not probed: the kernel has no bind-tx op",
                            "use Linux >= 6.16 for devmem TX"))
    try:
        checks += _rings_checks(ifname)
    except (DevmemError, OSError) as exc:
        checks += [Check("header-split", "unknown", f"could not read rings: {exc}", None),
                   Check("hds-thresh", "unknown", f"could not read rings: {exc}", None)]
    checks.append(_guard("ntuple", lambda: _ntuple_check(ifname)))
    checks.append(_guard("rss", lambda: _rss_check(ifname)))
    checks.append(_guard("rx-queues", lambda: _rx_queues_check(ifname)))
    checks.append(_udmabuf_check())
    try:
        checks += _cuda_checks()
    except Exception as exc:  # a broken CUDA install must not stop the other checks
        why = f"CUDA query failed: {type(exc).__name__}: {exc}"
        checks += [Check(n, "unknown", why, "check the NVIDIA driver and cuda-python")
                   for n in ("cuda-driver", "cuda-dmabuf")]
    checks.append(_kernel_dmabuf_check(ops))
    checks.append(_iommu_check())

    by_name = {c.name: c for c in checks}
    rx = by_name["queue-management-api"].status == "pass" and all(
        by_name[n].status != "fail" for n in RX_REQUIRED)
    tx = by_name["netmem-tx"].status == "pass" and all(by_name[n].status != "fail" for n in TX_REQUIRED)
    return DoctorReport(ifname=ifname, rx_supported=rx, tx_supported=tx, checks=checks)


def default_ifname() -> str:
    """The interface of the IPv4 default route (/proc/net/route), else the
    first non-loopback interface, else ``lo``."""
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[1] == "00000000":
                    return parts[0]
    except OSError:
        pass
    names = [n for _, n in socket.if_nameindex() if n != "lo"]
    return names[0] if names else "lo"
