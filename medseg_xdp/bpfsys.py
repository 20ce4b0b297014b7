"""Thin typed wrappers over the bpf() calls we use, through the libbpf inside BCC.

Map access goes by file descriptor, so tools that only read or write pinned
state (status, trace's map setup, break-glass) need neither a compile nor
BCC's table classes. Keys and values are ctypes structures from abi.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import mmap
import os
from collections.abc import Iterator
from typing import TypeVar

import numpy as np
from bcc import libbcc  # Debian's python3-bpfcc

_lib = libbcc.lib

BPF_ANY = 0
BPF_NOEXIST = 1
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

# libbpf symbols BCC does not declare for ctypes.
_lib.bpf_xdp_attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]
_lib.bpf_xdp_detach.argtypes = [ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]
_lib.bpf_xdp_query_id.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]
_lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
_lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
_lib.bpf_prog_get_next_id.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
_lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.c_void_p]
_lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
_lib.bpf_map_lookup_batch.argtypes = [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p,
]
_lib.bpf_map_update_batch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]

# The kernel's internal "not supported" (ENOTSUPP), which map types without batch ops return.
_ENOTSUPP = 524

T = TypeVar("T", bound=ctypes.Structure)


class BpfError(OSError):
    """A bpf() call failed; the message names the call and the object."""


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno() or -ret
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return ret


def obj_get(path: str) -> int:
    return _check(_lib.bpf_obj_get(path.encode()), f"open pinned {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(_lib.bpf_obj_pin(fd, path.encode()), f"pin {path}")


def possible_cpus() -> int:
    """Per-CPU map values have one slot per possible CPU."""
    text = open("/sys/devices/system/cpu/possible").read().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


class Map:
    """One BPF map by fd, with fixed key and value ctypes types."""

    def __init__(self, fd: int, name: str, key_type: type, value_type: type, percpu: bool = False) -> None:
        self.fd = fd
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.percpu = percpu
        self._slot = (ctypes.sizeof(value_type) + 7) // 8 * 8
        self._ncpus = possible_cpus() if percpu else 1

    def _value_buffer(self) -> ctypes.Array[ctypes.c_char]:
        return ctypes.create_string_buffer(self._slot * self._ncpus)

    def lookup(self, key: ctypes.Structure | ctypes._SimpleCData) -> ctypes.Structure | None:
        """The value, or None; for per-CPU maps, CPU 0's (use lookup_percpu)."""
        values = self.lookup_percpu(key)
        return values[0] if values else None

    def lookup_percpu(self, key: ctypes.Structure | ctypes._SimpleCData) -> list | None:
        buf = self._value_buffer()
        if _lib.bpf_lookup_elem(self.fd, ctypes.byref(key), buf) < 0:
            if ctypes.get_errno() == errno.ENOENT:
                return None
            _check(-1, f"lookup in {self.name}")
        raw = buf.raw
        return [self.value_type.from_buffer_copy(raw, cpu * self._slot) for cpu in range(self._ncpus)]

    def update(self, key: ctypes.Structure | ctypes._SimpleCData, value: ctypes.Structure | ctypes._SimpleCData, flags: int = BPF_ANY) -> None:
        if self.percpu:
            buf = self._value_buffer()
            for cpu in range(self._ncpus):
                ctypes.memmove(ctypes.addressof(buf) + cpu * self._slot, ctypes.byref(value), ctypes.sizeof(value))
            ret = _lib.bpf_update_elem(self.fd, ctypes.byref(key), buf, flags)
        else:
            ret = _lib.bpf_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags)
        _check(ret, f"update in {self.name}")

    def update_raw(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        _check(_lib.bpf_update_elem(self.fd, key, value, flags), f"update in {self.name}")

    def delete(self, key: ctypes.Structure | ctypes._SimpleCData | bytes) -> bool:
        ref = key if isinstance(key, bytes) else ctypes.byref(key)
        if _lib.bpf_delete_elem(self.fd, ref) < 0:
            if ctypes.get_errno() == errno.ENOENT:
                return False
            _check(-1, f"delete in {self.name}")
        return True

    def keys(self) -> Iterator[ctypes.Structure]:
        """All keys; a key deleted meanwhile restarts nothing (kernel semantics)."""
        key = self.key_type()
        first = True
        while True:
            nxt = self.key_type()
            ret = _lib.bpf_get_next_key(self.fd, None if first else ctypes.byref(key), ctypes.byref(nxt))
            if ret < 0:
                if ctypes.get_errno() == errno.ENOENT:
                    return
                _check(-1, f"iterate {self.name}")
            yield nxt
            key, first = nxt, False

    def items(self) -> Iterator[tuple[ctypes.Structure, ctypes.Structure]]:
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def lookup_batch_raw(self, batch_size: int = 4096) -> Iterator[tuple[int, bytes, bytes]]:
        """All entries in chunks through BPF_MAP_LOOKUP_BATCH: (count, keys, values) per chunk.

        keys holds count packed keys; values holds count values, each one
        slot per possible CPU for per-CPU maps (8-byte aligned slots), as
        the kernel lays them out. One syscall per chunk instead of two per
        entry. Raises BpfError with errno EOPNOTSUPP (or the kernel's
        ENOTSUPP, 524) for map types without batch operations (LPM tries,
        arrays of maps); items_batch falls back to items() then.
        """
        key_size = ctypes.sizeof(self.key_type)
        value_size = self._slot * self._ncpus if self.percpu else ctypes.sizeof(self.value_type)
        # hash maps use a 4-byte bucket cursor, other types a key
        token_size = max(key_size, 8)
        in_token = ctypes.create_string_buffer(token_size)
        out_token = ctypes.create_string_buffer(token_size)
        size = max(1, batch_size)
        first = True
        while True:
            keys = ctypes.create_string_buffer(key_size * size)
            values = ctypes.create_string_buffer(value_size * size)
            count = ctypes.c_uint32(size)
            ret = _lib.bpf_map_lookup_batch(self.fd, None if first else in_token, out_token, keys, values, ctypes.byref(count), None)
            err = ctypes.get_errno() if ret < 0 else 0
            if ret < 0 and err == errno.ENOSPC:
                size *= 2  # one hash bucket holds more entries than a chunk: retry the same cursor with room
                continue
            if ret < 0 and err != errno.ENOENT:
                _check(-1, f"batch lookup in {self.name}")
            if count.value:
                yield count.value, keys.raw[: key_size * count.value], values.raw[: value_size * count.value]
            if ret < 0:  # ENOENT: that was the last chunk
                return
            ctypes.memmove(in_token, out_token, token_size)
            first = False

    def items_batch(self, batch_size: int = 4096) -> Iterator[tuple[ctypes.Structure, ctypes.Structure]]:
        """What items() yields (per-CPU maps: CPU 0's value), read in batches.

        Map types without batch operations fall back to items(), key by key.
        """
        key_size = ctypes.sizeof(self.key_type)
        value_stride = self._slot * self._ncpus if self.percpu else ctypes.sizeof(self.value_type)
        chunks = self.lookup_batch_raw(batch_size)
        try:
            first_chunk = next(chunks)
        except StopIteration:
            return
        except BpfError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, _ENOTSUPP):
                yield from self.items()
                return
            raise
        for count, keys, values in itertools.chain([first_chunk], chunks):
            for i in range(count):
                yield (
                    self.key_type.from_buffer_copy(keys, i * key_size),
                    self.value_type.from_buffer_copy(values, i * value_stride),
                )

    @functools.cached_property
    def is_array(self) -> bool:
        """Arrays hold every index from creation: an entry is zeroed, never deleted."""
        return _map_info(self.fd).type in (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY)

    def present_raw(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) bytes of every entry; of an array, of every entry not all zeros (per CPU: on any CPU).
        A per-CPU map's value is CPU 0's. A mmapable array is read from its memory, not by batch lookups."""
        key_size = ctypes.sizeof(self.key_type)
        value_size = ctypes.sizeof(self.value_type)
        if self.is_array and _map_info(self.fd).map_flags & BPF_F_MMAPABLE:
            yield from self._present_mmapped(value_size)
            return
        stride = self._slot * self._ncpus if self.percpu else value_size
        for count, keys, values in self.lookup_batch_raw():
            rows = np.frombuffer(values, dtype=np.uint8).reshape(count, stride)
            chosen = np.flatnonzero(rows.any(axis=1)) if self.is_array else range(count)
            for i in chosen:
                yield keys[i * key_size : (i + 1) * key_size], rows[i, :value_size].tobytes()

    def _present_mmapped(self, value_size: int) -> Iterator[tuple[bytes, bytes]]:
        entries = map_max_entries(self.fd)
        length = entries * self._slot  # an array's elements are 8-byte aligned
        with mmap.mmap(self.fd, (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ) as memory:
            rows = np.frombuffer(memory, dtype=np.uint8, count=length).reshape(entries, self._slot)
            found = [(int(i), rows[i, :value_size].tobytes()) for i in np.flatnonzero(rows.any(axis=1))]
            del rows  # the mmap closes only once no array views it
        for index, value in found:
            yield index.to_bytes(4, "little"), value

    def erase(self, key: bytes) -> None:
        """Delete an entry; an array's is set to zeros."""
        if self.is_array:
            self.update_raw(key, bytes(self._slot * self._ncpus))
        else:
            self.delete(key)

    def update_batch_raw(self, keys: bytes, values: bytes, count: int, flags: int = BPF_ANY) -> int:
        """Write count packed keys and values (per-CPU maps: every CPU's slot) in one BPF_MAP_UPDATE_BATCH.

        Returns count; raises BpfError naming how many entries were written
        before the one that failed.
        """
        done = ctypes.c_uint32(count)
        opts = _MapBatchOpts(ctypes.sizeof(_MapBatchOpts), flags, 0)
        key_buf = ctypes.create_string_buffer(keys, len(keys))
        value_buf = ctypes.create_string_buffer(values, len(values))
        if _lib.bpf_map_update_batch(self.fd, key_buf, value_buf, ctypes.byref(done), ctypes.byref(opts)) < 0:
            _check(-1, f"batch update in {self.name} (written: {done.value} of {count})")
        return count

    def summed_counters(self) -> Iterator[tuple[bytes, int, int]]:
        """(key bytes, packets, bytes) of every non-zero struct counter in a per-CPU map,
        summed over CPUs: one batch syscall per chunk instead of one per key."""
        key_size = ctypes.sizeof(self.key_type)
        for count, keys, values in self.lookup_batch_raw():
            summed = np.frombuffer(values, dtype=np.uint64).reshape(count, self._ncpus, self._slot // 8)[:, :, :2].sum(axis=1)
            for i in np.flatnonzero(summed.any(axis=1)):
                yield keys[i * key_size : (i + 1) * key_size], int(summed[i, 0]), int(summed[i, 1])

    def zero_percpu(self, indexes: Iterator[int] | list[int]) -> None:
        """Set entries of a per-CPU array to zero on every CPU."""
        zeros = self._value_buffer()
        for index in indexes:
            _check(_lib.bpf_update_elem(self.fd, ctypes.byref(ctypes.c_uint32(index)), zeros, BPF_ANY), f"zero {self.name}[{index}]")

    def sum_percpu(self, key: ctypes.Structure | ctypes._SimpleCData) -> list[int] | None:
        """Sum of a per-CPU value over CPUs, field by field (counters)."""
        values = self.lookup_percpu(key)
        if values is None:
            return None
        if isinstance(values[0], ctypes._SimpleCData):
            return [sum(v.value for v in values)]
        return [sum(getattr(v, name) for v in values) for name, _ in self.value_type._fields_]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _BpfProgInfo(ctypes.Structure):
    # The kernel's struct bpf_prog_info (uapi, stable) up to verified_insns
    # (Linux 5.16); older kernels fill less and leave the rest zero.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
    ]


# The verifier's budget of processed instructions per program (BPF_COMPLEXITY_LIMIT_INSNS).
VERIFIER_INSN_LIMIT = 1_000_000


def _prog_info(fd: int) -> _BpfProgInfo:
    info = _BpfProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "program info")
    return info


def prog_info(fd: int) -> tuple[int, str]:
    """(id, name) of a loaded program."""
    info = _prog_info(fd)
    return info.id, info.name.decode()


def prog_verified_insns(fd: int) -> int:
    """Instructions the verifier processed to load the program (0 before Linux 5.16)."""
    return int(_prog_info(fd).verified_insns)


class _BpfMapInfo(ctypes.Structure):
    # The leading fields of the kernel's struct bpf_map_info (uapi, stable).
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    ]


def _map_info(fd: int) -> _BpfMapInfo:
    info = _BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "map info")
    return info


def map_max_entries(fd: int) -> int:
    return int(_map_info(fd).max_entries)


def map_id(fd: int) -> int:
    return int(_map_info(fd).id)


BPF_F_MMAPABLE = 1 << 10
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6




def prog_fd_by_id(prog_id: int) -> int:
    return _check(_lib.bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")


def loaded_program_ids() -> list[int]:
    """Ids of every BPF program loaded on this host (all namespaces)."""
    ids, current, following = [], 0, ctypes.c_uint32()
    while _lib.bpf_prog_get_next_id(current, ctypes.byref(following)) == 0:
        current = following.value
        ids.append(current)
    return ids


def prog_map_ids(prog_id: int) -> set[int]:
    """Ids of the maps a loaded program uses."""
    fd = prog_fd_by_id(prog_id)
    try:
        count = _prog_info(fd).nr_map_ids
        ids = (ctypes.c_uint32 * max(count, 1))()
        info = _BpfProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(_lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "program map ids")
        return set(ids[: min(count, info.nr_map_ids)])
    finally:
        os.close(fd)


def prog_name_by_id(prog_id: int) -> str | None:
    try:
        fd = prog_fd_by_id(prog_id)
    except BpfError:
        return None
    try:
        return prog_info(fd)[1]
    finally:
        os.close(fd)


class _MapBatchOpts(ctypes.Structure):
    # libbpf's struct bpf_map_batch_opts
    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _XdpAttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


def xdp_attached_id(ifindex: int, flags: int = 0) -> int:
    """Id of the XDP program on an interface (in this thread's netns), 0 if none."""
    prog_id = ctypes.c_uint32(0)
    _check(_lib.bpf_xdp_query_id(ifindex, flags, ctypes.byref(prog_id)), f"query XDP on ifindex {ifindex}")
    return prog_id.value


def xdp_attach(ifindex: int, prog_fd: int, flags: int, old_prog_fd: int = -1) -> None:
    opts = None
    if old_prog_fd >= 0:
        opts = _XdpAttachOpts(ctypes.sizeof(_XdpAttachOpts), old_prog_fd)
        flags |= XDP_FLAGS_REPLACE
    _check(
        _lib.bpf_xdp_attach(ifindex, prog_fd, flags, ctypes.byref(opts) if opts else None),
        f"attach XDP to ifindex {ifindex}",
    )


def xdp_detach(ifindex: int, flags: int) -> None:
    _check(_lib.bpf_xdp_detach(ifindex, flags, None), f"detach XDP from ifindex {ifindex}")


class _TestRunOpts(ctypes.Structure):
    # libbpf's struct bpf_test_run_opts
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    # uapi struct xdp_md, the context of a test run
    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


def prog_test_run(
    prog_fd: int,
    frame: bytes,
    ingress_ifindex: int = 0,
    repeat: int = 1,
    flags: int = 0,
    batch_size: int = 0,
) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN of an XDP program on one frame: (retval, ns per run).

    ingress_ifindex must name an interface of this thread's network namespace
    (0: loopback). With repeat > 1 every run after the first sees the state
    the first one left (an established flow, for instance).
    """
    data = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(len(frame) + 256)
    ctx = XdpMd(data_end=len(frame), ingress_ifindex=ingress_ifindex)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.cast(data, ctypes.c_void_p),
        data_size_in=len(frame),
        data_out=None if flags & BPF_F_TEST_XDP_LIVE_FRAMES else ctypes.cast(out, ctypes.c_void_p),
        data_size_out=0 if flags & BPF_F_TEST_XDP_LIVE_FRAMES else len(out),
        ctx_in=ctypes.cast(ctypes.byref(ctx), ctypes.c_void_p),
        ctx_size_in=ctypes.sizeof(ctx),
        repeat=repeat,
        flags=flags,
        batch_size=batch_size,
    )
    _check(_lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return opts.retval, opts.duration
