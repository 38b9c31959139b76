"""Conformance cases for vbd-backend's NBD export, driven through libnbd's Python binding.

Run by tests/nbd_clients.rs as: /usr/bin/python3 nbd_conformance.py SOCKET SIZE, on a fresh
writable export of SIZE bytes named xvda. Every case asserts an exact result; the last line
printed says that all of them passed.
"""

import errno
import sys

import nbd

SOCKET = sys.argv[1]
SIZE = int(sys.argv[2])
KIB = 1024


def connect(structured=True, strict=True):
    handle = nbd.NBD()
    handle.set_export_name("xvda")
    handle.set_request_structured_replies(structured)
    handle.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if not strict:
        # Let libnbd send what it would otherwise refuse itself: the server must judge.
        handle.set_strict_mode(0)
    handle.connect_unix(SOCKET)
    return handle


def fails_with(expected, call, why):
    try:
        call()
    except nbd.Error as error:
        assert error.errnum == expected, f"{why}: {error.errno}, not {errno.errorcode[expected]}"
        return
    raise AssertionError(f"{why}: succeeded")


def extents(handle, length, offset, flags=0):
    seen = []

    def callback(metacontext, at, entries, error):
        assert metacontext == nbd.CONTEXT_BASE_ALLOCATION
        seen.extend(zip(entries[0::2], entries[1::2]))
        return 0

    handle.block_status(length, offset, callback, flags)
    return seen


def chunks(handle, length, offset, flags=0):
    seen = []

    def callback(buffer, at, status, error):
        seen.append((at, len(buffer), status))
        return 0

    buffer = handle.pread_structured(length, offset, callback, flags)
    return bytes(buffer), sorted(seen)


def case_negotiation():
    handle = connect()
    assert handle.get_size() == SIZE
    assert handle.get_structured_replies_negotiated()
    assert handle.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    assert handle.can_multi_conn()
    assert handle.can_fast_zero()
    assert handle.can_cache()
    assert handle.can_df()
    assert handle.can_fua()
    assert handle.can_flush()
    assert handle.can_trim()
    assert handle.can_zero()
    assert not handle.is_read_only()
    assert handle.get_block_size(nbd.SIZE_MINIMUM) == 512
    assert handle.get_block_size(nbd.SIZE_PREFERRED) == 4096
    assert handle.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
    handle.shutdown()


def case_simple_replies_when_structured_ones_are_not_asked():
    handle = connect(structured=False)
    assert not handle.get_structured_replies_negotiated()
    assert not handle.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    assert not handle.can_df()
    handle.pwrite(b"\x11" * 4096, 0)
    assert handle.pread(4096, 0) == b"\x11" * 4096
    fails_with(errno.EINVAL, lambda: handle.pread(512, SIZE), "read past the end")
    handle.trim(4096, 0)
    handle.shutdown()


def case_option_haggling():
    handle = nbd.NBD()
    handle.set_opt_mode(True)
    handle.connect_unix(SOCKET)
    names = []
    handle.opt_list(lambda name, description: names.append(name) or 0)
    assert names == ["xvda"], names
    contexts = []
    count = handle.opt_list_meta_context(lambda name: contexts.append(name) or 0)
    assert (count, contexts) == (1, [nbd.CONTEXT_BASE_ALLOCATION]), contexts
    # A query of the base namespace lists the same; a query of another lists nothing.
    handle.add_meta_context("base:")
    assert handle.opt_list_meta_context(lambda name: 0) == 1
    handle.clear_meta_contexts()
    handle.add_meta_context("qemu:dirty-bitmap:x")
    assert handle.opt_list_meta_context(lambda name: 0) == 0
    handle.set_export_name("nope")
    fails_with(errno.ENOENT, handle.opt_info, "INFO of an unknown export")
    handle.set_export_name("xvda")
    handle.opt_info()
    assert handle.get_size() == SIZE
    handle.opt_abort()

    # A client that haggles without end is disconnected after 64 options.
    handle = nbd.NBD()
    handle.set_opt_mode(True)
    handle.connect_unix(SOCKET)
    handle.set_export_name("xvda")
    answered = 0
    try:
        for _ in range(100):
            handle.opt_info()
            answered += 1
    except nbd.Error:
        pass
    # libnbd's own NBD_OPT_STRUCTURED_REPLY was the first of the 64.
    assert answered == 63, answered


def case_reads_writes_and_fua_on_every_command():
    handle = connect()
    data = bytes(range(256)) * 32
    handle.pwrite(data, 64 * KIB, nbd.CMD_FLAG_FUA)
    assert handle.pread(len(data), 64 * KIB) == data
    # FUA is accepted on every command when offered.
    strict = connect(strict=False)
    assert strict.pread(len(data), 64 * KIB, nbd.CMD_FLAG_FUA) == data
    strict.flush(nbd.CMD_FLAG_FUA)
    strict.cache(4096, 0, nbd.CMD_FLAG_FUA)
    strict.trim(4096, 512 * KIB, nbd.CMD_FLAG_FUA)
    strict.zero(4096, 512 * KIB, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
    assert len(extents(strict, 4096, 0, nbd.CMD_FLAG_FUA)) == 1
    strict.shutdown()
    handle.shutdown()


def case_structured_reads_send_holes_as_hole_chunks():
    handle = connect()
    handle.zero(SIZE, 0)
    handle.pwrite(b"\xaa" * 8192, 8 * KIB)
    data, seen = chunks(handle, 32 * KIB, 0)
    assert data == bytes(8 * KIB) + b"\xaa" * 8192 + bytes(16 * KIB)
    assert seen == [
        (0, 8 * KIB, nbd.READ_HOLE),
        (8 * KIB, 8 * KIB, nbd.READ_DATA),
        (16 * KIB, 16 * KIB, nbd.READ_HOLE),
    ], seen
    # Don't fragment: one data chunk, zeros included.
    data, seen = chunks(handle, 32 * KIB, 0, nbd.CMD_FLAG_DF)
    assert data == bytes(8 * KIB) + b"\xaa" * 8192 + bytes(16 * KIB)
    assert seen == [(0, 32 * KIB, nbd.READ_DATA)], seen
    handle.shutdown()


def case_block_status():
    handle = connect()
    handle.zero(SIZE, 0)
    handle.pwrite(b"\x55" * 4096, 12 * KIB)
    hole = nbd.STATE_HOLE | nbd.STATE_ZERO
    assert extents(handle, 32 * KIB, 0) == [
        (12 * KIB, hole),
        (4 * KIB, 0),
        (16 * KIB, hole),
    ]
    assert extents(handle, 32 * KIB, 0, nbd.CMD_FLAG_REQ_ONE) == [(12 * KIB, hole)]
    assert extents(handle, 8 * KIB, 14 * KIB) == [(2 * KIB, 0), (6 * KIB, hole)]
    strict = connect(strict=False)
    fails_with(errno.EINVAL, lambda: extents(strict, 1024, SIZE), "status past the end")
    fails_with(
        errno.EINVAL, lambda: extents(strict, 1024, 2**64 - 512), "overflowing status"
    )
    strict.shutdown()
    plain = connect(structured=False, strict=False)
    fails_with(errno.EINVAL, lambda: extents(plain, 4096, 0), "status never negotiated")
    plain.shutdown()
    handle.shutdown()


def case_zeroes():
    handle = connect()
    handle.pwrite(b"\x77" * 8192, 0)
    handle.zero(8192, 0, nbd.CMD_FLAG_FAST_ZERO)
    assert handle.pread(8192, 0) == bytes(8192)
    handle.pwrite(b"\x77" * 8192, 0)
    handle.zero(4096, 0, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
    assert handle.pread(8192, 0) == bytes(4096) + b"\x77" * 4096
    handle.shutdown()


def case_errors():
    handle = connect(strict=False)
    fails_with(errno.EINVAL, lambda: handle.pread(512, SIZE), "read past the end")
    fails_with(errno.ENOSPC, lambda: handle.pwrite(bytes(512), SIZE), "write past the end")
    fails_with(errno.ENOSPC, lambda: handle.trim(1024, SIZE - 512), "trim past the end")
    fails_with(errno.ENOSPC, lambda: handle.zero(1024, SIZE - 512), "zero past the end")
    fails_with(errno.EINVAL, lambda: handle.cache(1024, SIZE - 512), "cache past the end")
    fails_with(
        errno.EINVAL, lambda: handle.pread(512, 2**64 - 512), "a read whose end overflows"
    )
    fails_with(
        errno.ENOSPC,
        lambda: handle.pwrite(bytes(512), 2**64 - 512),
        "a write whose end overflows",
    )
    fails_with(errno.EINVAL, lambda: handle.pread(100, 0), "unaligned length")
    fails_with(errno.EINVAL, lambda: handle.pread(512, 100), "unaligned offset")
    fails_with(errno.EINVAL, lambda: handle.pread(0, 0), "an empty read")
    fails_with(
        errno.EINVAL, lambda: handle.pread(512, 0, nbd.CMD_FLAG_REQ_ONE), "a status flag"
    )
    fails_with(
        errno.EINVAL, lambda: handle.trim(512, 0, nbd.CMD_FLAG_FAST_ZERO), "fast trim"
    )
    fails_with(
        errno.EINVAL, lambda: handle.pread((32 << 20) + 512, 0), "longer than the maximum"
    )
    # Still in step after all of them.
    handle.pwrite(b"\x42" * 512, 0)
    assert handle.pread(512, 0) == b"\x42" * 512
    handle.shutdown()


def case_many_connections_share_one_view():
    # What multi-conn promises: a write acknowledged on one connection is read on another,
    # and a flush on any connection covers it.
    writers = [connect() for _ in range(4)]
    for index, writer in enumerate(writers):
        writer.pwrite(bytes([index + 1]) * 4096, index * 4096)
    writers[3].flush()
    for index, reader in enumerate(reversed(writers)):
        assert reader.pread(16384, 0) == b"".join(bytes([n + 1]) * 4096 for n in range(4))
    for writer in writers:
        writer.shutdown()


for name, case in sorted(globals().copy().items()):
    if name.startswith("case_"):
        case()
        print(f"{name}: passed")
print("conformance: all cases passed")
