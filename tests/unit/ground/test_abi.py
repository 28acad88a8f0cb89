"""Struct layouts in abi.py against the C compiler's view of the kernel structs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devmemtcp import abi

LAYOUTS = {
    "dmabuf_cmsg": (abi.DMABUF_CMSG_DTYPE, 24,
                    {"frag_offset": 0, "frag_size": 8, "frag_token": 12, "dmabuf_id": 16,
                     "flags": 20}),
    "dmabuf_token": (abi.DMABUF_TOKEN_DTYPE, 8, {"token_start": 0, "token_count": 4}),
    "cmsghdr": (abi.CMSGHDR_DTYPE, 16, {"cmsg_len": 0, "cmsg_level": 8, "cmsg_type": 12}),
    "sock_extended_err": (abi.SOCK_EXTENDED_ERR_DTYPE, 16,
                          {"ee_errno": 0, "ee_origin": 4, "ee_type": 5, "ee_code": 6,
                           "ee_pad": 7, "ee_info": 8, "ee_data": 12}),
    "udmabuf_create": (abi.UDMABUF_CREATE_DTYPE, 24,
                       {"memfd": 0, "flags": 4, "offset": 8, "size": 16}),
}

# The same structs as the uapi headers declare them (declared here so the test
# does not depend on the installed kernel headers being new enough).
C_SOURCE = r"""
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <linux/errqueue.h>
#include <linux/capability.h>
struct dmabuf_cmsg { uint64_t frag_offset; uint32_t frag_size; uint32_t frag_token;
                     uint32_t dmabuf_id; uint32_t flags; };
struct dmabuf_token { uint32_t token_start; uint32_t token_count; };
struct udmabuf_create { uint32_t memfd; uint32_t flags; uint64_t offset; uint64_t size; };
#define F(s, f) printf(#s " " #f " %zu\n", offsetof(struct s, f))
#define S(s) printf(#s " sizeof %zu\n", sizeof(struct s))
int main(void) {
  S(dmabuf_cmsg); F(dmabuf_cmsg, frag_offset); F(dmabuf_cmsg, frag_size);
  F(dmabuf_cmsg, frag_token); F(dmabuf_cmsg, dmabuf_id); F(dmabuf_cmsg, flags);
  S(dmabuf_token); F(dmabuf_token, token_start); F(dmabuf_token, token_count);
  S(cmsghdr); F(cmsghdr, cmsg_len); F(cmsghdr, cmsg_level); F(cmsghdr, cmsg_type);
  S(sock_extended_err); F(sock_extended_err, ee_errno); F(sock_extended_err, ee_origin);
  F(sock_extended_err, ee_type); F(sock_extended_err, ee_code); F(sock_extended_err, ee_pad);
  F(sock_extended_err, ee_info); F(sock_extended_err, ee_data);
  S(udmabuf_create); F(udmabuf_create, memfd); F(udmabuf_create, flags);
  F(udmabuf_create, offset); F(udmabuf_create, size);
  printf("CMSG_LEN4 %zu\nCMSG_SPACE24 %zu\n", (size_t)CMSG_LEN(4), (size_t)CMSG_SPACE(24));
  printf("CAP_NET_ADMIN %d\nMSG_MORE %d\n", CAP_NET_ADMIN, (int)MSG_MORE);
  return 0;
}
"""


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_size_and_offsets(name: str) -> None:
    dtype, size, offsets = LAYOUTS[name]
    assert dtype.itemsize == size
    assert {f: dtype.fields[f][1] for f in dtype.names} == offsets


def test_layouts_match_c_compiler(tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        pytest.skip("needs gcc (apt-get install gcc)")
    src = tmp_path / "layout.c"
    src.write_text(C_SOURCE)
    exe = tmp_path / "layout"
    subprocess.run([cc, "-o", str(exe), str(src)], check=True)
    seen: dict[tuple[str, str], int] = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True,
                               text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            seen[(parts[0], parts[1])] = int(parts[2])
        else:
            seen[(parts[0], "")] = int(parts[1])
    for name, (dtype, _, offsets) in LAYOUTS.items():
        assert seen[(name, "sizeof")] == dtype.itemsize, name
        for field, off in offsets.items():
            assert seen[(name, field)] == dtype.fields[field][1] == off, (name, field)
    assert seen[("CMSG_LEN4", "")] == abi.cmsg_len(4)
    assert seen[("CMSG_SPACE24", "")] == abi.cmsg_space(24) == abi.DMABUF_CMSG_SPACE
    # (linux/uio.h clashes with sys/socket.h in one unit: UIO_MAXIOV via libc's IOV_MAX)
    assert os.sysconf("SC_IOV_MAX") == abi.UIO_MAXIOV
    assert seen[("CAP_NET_ADMIN", "")] == abi.CAP_NET_ADMIN
    assert seen[("MSG_MORE", "")] == abi.MSG_MORE


def test_socket_constants_generic() -> None:
    assert (abi.SO_DEVMEM_LINEAR, abi.SO_DEVMEM_DMABUF, abi.SO_DEVMEM_DONTNEED) == (78, 79, 80)
    assert abi.SOCKET_OPTS_BY_ARCH["parisc"] == (0x404E, 0x404F, 0x4050)
    assert abi.MSG_SOCK_DEVMEM == 0x2000000 and abi.MSG_ZEROCOPY == 0x4000000
    assert abi.UDMABUF_CREATE == 0x40187542
