#!/usr/bin/env python3
"""make_seeds.py — write the seed corpus of tests/fuzz/fuzz_segment (segment files).

Seeds only give libFuzzer a head start (valid headers, valid CRCs, each record type, an
LZ4 record, a torn tail, a damaged CRC); it mutates from there. The byte layout is the
engine's format version 1, documented at the top of src/store/store.c. Regenerate with
`python3 tests/fuzz/corpus/make_seeds.py` after a format change. Input byte 0 is the
target's layout selector (see fuzz_segment.c).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def seg_header(seg_id, version=1):
    h = struct.pack("<IHHQQI", 0x4753564B, version, 32, seg_id, 1732700000000, 0)
    return h + struct.pack("<I", crc32c(h))


def record(key, val=b"", rtype=1, ts=1, node=7, expiry=0, flags=0, raw_len=None):
    if raw_len is None:
        raw_len = len(val)
    body = struct.pack("<BBHIIQIIQ", rtype, flags, len(key), len(val), raw_len, ts, node, 0, expiry)
    crc = crc32c(key + val if val else key, crc32c(body))
    return struct.pack("<I", crc) + body + key + val


# An LZ4 block of 25 decoded bytes: 4 literals, a 16-byte match at offset 4, 5 literals.
LZ4_BLOCK = bytes([0x4C]) + b"abcd" + bytes([4, 0]) + bytes([0x50]) + b"efghi"
LZ4_RAW = 25


def write(name, data):
    d = os.path.join(HERE, "fuzz_segment")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


recs = [
    record(b"alpha", b"one", ts=10),
    record(b"alpha", b"two, overwritten", ts=11),
    record(b"beta", b"", rtype=2, ts=12),
    record(b"gamma", b"expires", ts=13, expiry=1732700000000),
    record(b"delta", LZ4_BLOCK, ts=14, flags=1, raw_len=LZ4_RAW),
]
seg = seg_header(1) + b"".join(recs)
write("newest_valid", b"\x00" + seg)
write("newest_torn_tail", b"\x00" + seg[:-7])
write("newest_zero_tail", b"\x00" + seg + b"\x00" * 64)
write("header_only", b"\x00" + seg_header(1))
write("newer_format", b"\x00" + seg_header(1, version=2) + recs[0])
bad = bytearray(seg)
bad[32 + len(recs[0]) + 45] ^= 0x10  # a value byte of the second record
write("older_bad_crc_middle", b"\x01" + bytes(bad))
write("second_segment_valid", b"\x02" + seg_header(2) + b"".join(recs))
write("second_segment_short", b"\x02" + seg_header(2)[:20])
