"""Per-socket TCP byte counters from the kernel, via netlink ``sock_diag`` (no root, no eBPF).

Linux has no per-process network counter: ``/proc/<pid>/net/dev`` is per network
namespace (the whole machine here) and ``/proc/<pid>/io`` ``rchar``/``wchar`` mix sockets
with files and pipes. What the kernel does keep is, for every TCP socket, ``tcpi_bytes_acked``
(payload sent and acknowledged) and ``tcpi_bytes_received`` (payload received) in
``struct tcp_info``. One ``SOCK_DIAG_BY_FAMILY`` dump per address family returns them for all
TCP sockets of the network namespace together with each socket's inode; the process-tree
sampler keeps the inodes that appear in its processes' ``/proc/<pid>/fd``.

Limits, on purpose:
- TCP only (IPv4 and IPv6, loopback included). UDP and UNIX sockets have no byte counters here.
- Payload bytes: headers and retransmissions are not counted.
- A socket that opens and closes between two samples is not seen, and the bytes a socket moved
  after the last sample and before it closed are lost: use keep-alive connections, or sample
  faster, where this matters.
- Traffic between two processes of the same tree over loopback counts on both sockets
  (sent + received), i.e. twice.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import struct
import time
from collections.abc import Iterable

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
TCP_ALL_STATES = 0xFFFFFFFF
_BATCH = 128  # look-ups per send (replies ~330 bytes each: well within the receive buffer)

_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed 48-byte inet_diag_sockid.
_REQ = struct.Struct("=BBBBI")  # followed by the 48-byte sockid
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBB48xIIIII")
_RTA = struct.Struct("=HH")
# struct tcp_info offsets (include/uapi/linux/tcp.h): tcpi_bytes_acked at 120, tcpi_bytes_received at 128.
_TCPI_BYTES = struct.Struct("=QQ")
_TCPI_BYTES_OFFSET = 120


def _align4(n: int) -> int:
    return (n + 3) & ~3


class TcpCounters:
    """``{socket inode: bytes_acked + bytes_received}`` for given TCP sockets.

    A dump walks every bucket of the kernel's TCP hash tables (262,144 here: ~3 ms per address
    family whatever the number of sockets), so it runs only when an inode not seen before
    appears. It records each socket's identity (4-tuple and cookie); later samples ask for
    exactly those sockets, one hashed lookup each, all in one send (~5 µs per socket). Inodes a dump did not find (UNIX
    or UDP sockets, or a TCP socket not connected yet) are looked for again at most every
    ``recheck_s`` seconds.

    ``available`` is False where the kernel refuses sock_diag (e.g. a seccomp sandbox); the
    sampler then reports net as 0 and says so in ``error``.
    """

    def __init__(self, recheck_s: float = 10.0) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._ids: dict[int, tuple[int, bytes]] = {}  # inode -> (family, raw inet_diag_sockid)
        self._not_tcp: dict[int, float] = {}  # inode -> monotonic time it was last looked for
        self.recheck_s = recheck_s
        self.available = True
        self.error: str | None = None
        self.dumps = 0  # how many full dumps ran (for the overhead benchmark)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
            self._sock.settimeout(2.0)
        return self._sock

    def read(self, inodes: Iterable[int]) -> dict[int, int]:
        """Counters of those ``inodes`` that are TCP sockets still open."""
        if not self.available:
            return {}
        wanted = set(inodes)
        now = time.monotonic()
        unknown = [
            i
            for i in wanted
            if i not in self._ids and now - self._not_tcp.get(i, -math.inf) >= self.recheck_s
        ]
        out: dict[int, int] = {}
        try:
            if unknown:
                self._learn(set(unknown), out, now)
            known = [i for i in wanted if i not in out and i in self._ids]
            for start in range(0, len(known), _BATCH):
                batch = known[start : start + _BATCH]
                values = self._query_many([self._ids[i] for i in batch])
                for inode, value in zip(batch, values, strict=True):
                    if value is None:  # closed since: forget it
                        del self._ids[inode]
                    else:
                        out[inode] = value
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
                self.available = False
                self.error = f"sock_diag unavailable: {exc}"
            self.close()
        # Forget what the tree no longer holds, so the caches stay the size of the tree.
        for cache in (self._ids, self._not_tcp):
            for inode in [i for i in cache if i not in wanted]:
                del cache[inode]
        return out

    def read_all(self) -> dict[int, int]:
        """Every TCP socket of the namespace (one full dump per family; for tests and tools)."""
        found: dict[int, tuple[int, bytes, int]] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            self._request(family, b"\0" * 48, dump=True, found=found)
        return {inode: v[2] for inode, v in found.items()}

    def _learn(self, unknown: set[int], out: dict[int, int], now: float) -> None:
        found: dict[int, tuple[int, bytes, int]] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            self._request(family, b"\0" * 48, dump=True, found=found)
        self.dumps += 1
        for inode in unknown:
            if inode in found:
                family, sockid, value = found[inode]
                self._ids[inode] = (family, sockid)
                self._not_tcp.pop(inode, None)
                out[inode] = value
            else:
                self._not_tcp[inode] = now

    def _query_many(self, ids: list[tuple[int, bytes]]) -> list[int | None]:
        """Exact look-ups of many sockets with one send: the kernel answers each request of the
        buffer in turn (a tcp_info, or ENOENT for a socket closed since)."""
        sock = self._socket()
        first = self._seq + 1
        parts = []
        for family, sockid in ids:
            self._seq += 1
            body = (
                _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, TCP_ALL_STATES)
                + sockid
            )
            parts.append(
                _NLMSG_HDR.pack(
                    _NLMSG_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, self._seq, 0
                )
            )
            parts.append(body)
        sock.send(b"".join(parts))
        values: list[int | None] = [None] * len(ids)
        pending = len(ids)
        while pending:
            data = sock.recv(1 << 16)
            off = 0
            while off + _NLMSG_HDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = _NLMSG_HDR.unpack_from(data, off)
                if length < _NLMSG_HDR.size:
                    break
                i = mseq - first
                if 0 <= i < len(ids):
                    if mtype == SOCK_DIAG_BY_FAMILY:
                        found: dict[int, tuple[int, bytes, int]] = {}
                        self._parse(data, off + _NLMSG_HDR.size, off + length, found)
                        values[i] = next(iter(found.values()))[2] if found else None
                        pending -= 1
                    elif mtype == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, off + _NLMSG_HDR.size)
                        if code and -code not in (errno.ENOENT,):
                            raise OSError(-code, os.strerror(-code))
                        pending -= 1
                off += _align4(length)
        return values

    def _request(
        self, family: int, sockid: bytes, *, dump: bool, found: dict[int, tuple[int, bytes, int]]
    ) -> None:
        sock = self._socket()
        self._seq += 1
        seq = self._seq
        states = TCP_ALL_STATES
        body = _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, states) + sockid
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
        sock.send(
            _NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0) + body
        )
        while True:
            data = sock.recv(1 << 16)
            off = 0
            while off + _NLMSG_HDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = _NLMSG_HDR.unpack_from(data, off)
                if length < _NLMSG_HDR.size:
                    return
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return
                    if mtype == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, off + _NLMSG_HDR.size)
                        if code:
                            raise OSError(-code, os.strerror(-code))
                        return
                    if mtype == SOCK_DIAG_BY_FAMILY:
                        self._parse(data, off + _NLMSG_HDR.size, off + length, found)
                        if not dump:
                            return
                off += _align4(length)

    @staticmethod
    def _parse(data: bytes, start: int, end: int, found: dict[int, tuple[int, bytes, int]]) -> None:
        family = data[start]
        sockid = data[start + 4 : start + 52]
        inode = _MSG.unpack_from(data, start)[-1]
        pos = start + _MSG.size
        while pos + _RTA.size <= end:
            rta_len, rta_type = _RTA.unpack_from(data, pos)
            if rta_len < _RTA.size:
                break
            if (
                rta_type == INET_DIAG_INFO
                and rta_len >= _RTA.size + _TCPI_BYTES_OFFSET + _TCPI_BYTES.size
            ):
                acked, received = _TCPI_BYTES.unpack_from(
                    data, pos + _RTA.size + _TCPI_BYTES_OFFSET
                )
                if inode:
                    found[inode] = (family, sockid, acked + received)
                break
            pos += _align4(rta_len)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open (empty if it is gone or not ours)."""
    fd_dir = f"/proc/{pid}/fd"
    found: set[int] = set()
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found
