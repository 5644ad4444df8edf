"""Keep a shadow from changing anything but its own directory: Linux Landlock, unprivileged.

The shadow's launcher calls :func:`restrict_writes` before it runs any workload code. From then
on the process and everything it starts may read anything but may create, write, truncate,
rename or delete files only beneath the allowed directories (its own work dir, ``/dev`` for
``/dev/null`` and ``/dev/shm``, and any the operator adds through ``PRAE_SHADOW_WRITABLE``).
It also cannot send signals to processes outside its own sandbox (Landlock ABI 6), so it cannot
kill or stop the live workload. The rules are inherited across fork and exec and cannot be lifted.

Landlock is in mainline Linux since 5.13 (ABI 1). Where it is missing or disabled,
:func:`restrict_writes` returns ``"none"`` and the shadow still gets only its own directories
(it is never told the live run's paths), but nothing enforces it: the launcher writes that into
the shadow's result so the report says so.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterable

_SYS_CREATE_RULESET = 444  # same numbers on x86_64 and aarch64 (generic syscall table)
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# LANDLOCK_ACCESS_FS_* rights that change the file system (reads are left alone).
_WRITE_FILE = 1 << 1
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_CHAR = 1 << 6
_MAKE_DIR = 1 << 7
_MAKE_REG = 1 << 8
_MAKE_SOCK = 1 << 9
_MAKE_FIFO = 1 << 10
_MAKE_BLOCK = 1 << 11
_MAKE_SYM = 1 << 12
_REFER = 1 << 13  # ABI 2
_TRUNCATE = 1 << 14  # ABI 3
_SCOPE_SIGNAL = 1 << 1  # ABI 6

_ABI1_WRITES = (
    _WRITE_FILE
    | _REMOVE_DIR
    | _REMOVE_FILE
    | _MAKE_CHAR
    | _MAKE_DIR
    | _MAKE_REG
    | _MAKE_SOCK
    | _MAKE_FIFO
)
_ABI1_WRITES |= _MAKE_BLOCK | _MAKE_SYM


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 if unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        version = libc.syscall(
            _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
        )
    except (OSError, AttributeError):
        return 0
    return max(0, int(version))


def _handled(abi: int) -> int:
    rights = _ABI1_WRITES
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    return rights


def restrict_writes(writable: Iterable[str | os.PathLike[str]]) -> str:
    """Allow writes only beneath ``writable`` from now on, for this process and its children.

    Returns ``"landlock-v<abi>"`` when enforced, ``"none"`` when the kernel cannot.
    Raises OSError if Landlock exists but refuses the rules (the shadow must then not run).
    """
    abi = landlock_abi()
    if abi < 1:
        return "none"
    libc = ctypes.CDLL(None, use_errno=True)
    handled = _handled(abi)
    scoped = _SCOPE_SIGNAL if abi >= 6 else 0
    # struct landlock_ruleset_attr { u64 handled_access_fs; u64 handled_access_net; u64 scoped; }
    attr = struct.pack("=QQQ", handled, 0, scoped) if scoped else struct.pack("=Q", handled)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(_SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        for path in dict.fromkeys(os.fspath(p) for p in writable):
            if not os.path.exists(path):
                continue
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                # struct landlock_path_beneath_attr { u64 allowed_access; s32 parent_fd; } (packed)
                allowed = handled if os.path.isdir(path) else handled & (_WRITE_FILE | _TRUNCATE)
                rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
                if (
                    libc.syscall(
                        _SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, rule, ctypes.c_uint32(0)
                    )
                    < 0
                ):
                    err = ctypes.get_errno()
                    raise OSError(err, f"landlock_add_rule({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(ruleset)
    return f"landlock-v{abi}"
