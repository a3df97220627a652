#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/corpus/frames/ (files named seed-*) and the
reproducers in fuzz/regressions/.

    python3 fuzz/gen_seeds.py            # (re)writes fuzz/corpus/frames/seed-* and fuzz/regressions/*

Each input is a byte stream as a client sends it after the protocol header: frames of
`type:u8 channel:u16 size:u32 payload 0xCE`. Deterministic; standard library only.
Inputs the fuzzer found are kept next to these under their content hash.
"""

from __future__ import annotations

import struct
from pathlib import Path

OUT = Path(__file__).resolve().parent / "corpus" / "frames"
CRASHES = Path(__file__).resolve().parent / "regressions"

METHOD, HEADER, BODY, HEARTBEAT = 1, 2, 3, 8


def frame(kind: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes([end])


def shortstr(s: bytes | str) -> bytes:
    s = s.encode() if isinstance(s, str) else s
    return bytes([len(s)]) + s


def longstr(s: bytes | str) -> bytes:
    s = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(s)) + s


def value(v) -> bytes:
    """A field value with an explicit type tag: (tag, python value)."""
    tag, x = v
    t = tag.encode()
    if tag == "t":
        return t + bytes([1 if x else 0])
    if tag in "bB":
        return t + struct.pack(">b" if tag == "b" else ">B", x)
    if tag in "suU":
        return t + struct.pack({"s": ">h", "u": ">H", "U": ">h"}[tag], x)
    if tag in "Ii":
        return t + struct.pack(">i" if tag == "I" else ">I", x)
    if tag in "lL":
        return t + struct.pack(">q" if tag == "l" else ">Q", x)
    if tag == "T":
        return t + struct.pack(">Q", x)
    if tag == "f":
        return t + struct.pack(">f", x)
    if tag == "d":
        return t + struct.pack(">d", x)
    if tag == "D":
        scale, val = x
        return t + struct.pack(">Bi", scale, val)
    if tag in "Sx":
        return t + longstr(x)
    if tag == "F":
        return t + table(x)
    if tag == "A":
        body = b"".join(value(e) for e in x)
        return t + struct.pack(">I", len(body)) + body
    if tag == "V":
        return t
    raise ValueError(tag)


def table(entries) -> bytes:
    body = b"".join(shortstr(k) + value(v) for k, v in entries)
    return struct.pack(">I", len(body)) + body


def nested_table(depth: int, first: bytes = b"") -> bytes:
    """A table whose one value is nested `depth` deep, alternately in arrays and tables (built
    from the inside out: no recursion), after the raw entries `first`."""
    v = value(("S", "bottom"))
    for i in range(depth):
        if i % 2:
            v = b"A" + struct.pack(">I", len(v)) + v
        else:
            entry = shortstr("n") + v
            v = b"F" + struct.pack(">I", len(entry)) + entry
    entry = first + shortstr("deep") + v
    return struct.pack(">I", len(entry)) + entry


def method(class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return struct.pack(">HH", class_id, method_id) + args


def content_header(body_size: int, props: bytes, class_id: int = 60) -> bytes:
    return struct.pack(">HHQ", class_id, 0, body_size) + props


def props(fields: dict, extra_flag_words: tuple[int, ...] = ()) -> bytes:
    """Basic properties in spec order; `fields` maps property index (0..13) to its encoded value."""
    flags = 0
    for bit in fields:
        flags |= 1 << (15 - bit)
    if extra_flag_words:
        flags |= 1
    out = struct.pack(">H", flags)
    for i, w in enumerate(extra_flag_words):
        more = 1 if i + 1 < len(extra_flag_words) else 0
        out += struct.pack(">H", (w & 0xFFFE) | more)
    for bit in sorted(fields):
        out += fields[bit]
    return out


EVERY_TYPE = [
    ("bool", ("t", True)), ("i8", ("b", -5)), ("u8", ("B", 250)), ("i16", ("s", -300)),
    ("u16", ("u", 65000)), ("i32", ("I", -70000)), ("u32", ("i", 4000000000)),
    ("i64", ("l", -(1 << 40))), ("u64", ("L", 1 << 63)), ("ts", ("T", 1700000000)),
    ("f32", ("f", 1.5)), ("f64", ("d", -2.25)), ("dec", ("D", (2, 12345))),
    ("str", ("S", "héllo")), ("bytes", ("x", b"\x00\xff\xce")), ("void", ("V", None)),
    ("arr", ("A", [("S", "a"), ("I", 1), ("F", [("k", ("t", False))])])),
    ("tbl", ("F", [("nested", ("F", [("deeper", ("A", []))]))])),
]


def publish_sequence() -> bytes:
    body = b"hello, warren"
    p = props({0: shortstr("text/plain"), 2: table([("k", ("S", "v"))]), 3: bytes([2])})
    return b"".join([
        frame(METHOD, 1, method(20, 10, shortstr(""))),                       # channel.open
        frame(METHOD, 1, method(85, 10, b"\x00")),                            # confirm.select
        frame(METHOD, 1, method(60, 40, b"\x00\x00" + shortstr("amq.topic")   # basic.publish
                                 + shortstr("a.b.c") + b"\x03")),            # mandatory|immediate
        frame(HEADER, 1, content_header(len(body), p)),
        frame(BODY, 1, body[:5]),
        frame(BODY, 1, body[5:]),
        frame(HEARTBEAT, 0, b""),
        frame(METHOD, 1, method(60, 80, struct.pack(">QB", 1, 1))),           # basic.ack multiple
        frame(METHOD, 1, method(20, 40, struct.pack(">H", 200) + shortstr("bye") + b"\x00" * 4)),
    ])


def seeds() -> dict[str, bytes]:
    s: dict[str, bytes] = {}
    s["publish-sequence"] = publish_sequence()
    s["heartbeat"] = frame(HEARTBEAT, 0, b"")
    # a method frame header announcing 256 MiB: refused before any payload is awaited
    s["oversized-frame-header"] = struct.pack(">BHI", METHOD, 1, 0x10000000)
    qos = frame(METHOD, 1, method(60, 10, struct.pack(">IHB", 0, 10, 1)))
    s["bad-frame-end"] = qos[:-1] + b"\x00"
    s["unknown-frame-type"] = frame(9, 1, b"x") + qos
    declare_args = (b"\x00\x00" + shortstr("q") + b"\x02" + table([
        ("x-expires", ("I", 1000)), ("x-max-priority", ("B", 10)),
        ("x-message-ttl", ("l", 60000)), ("x-dead-letter-exchange", ("S", "dlx")),
        ("x-queue-mode", ("S", "lazy")), ("x-single-active-consumer", ("t", True)),
    ]))
    full_declare = method(50, 10, declare_args)
    s["queue-declare-arguments"] = frame(METHOD, 1, full_declare)
    # a well formed frame whose method arguments stop in the middle of the table
    s["truncated-method"] = frame(METHOD, 1, full_declare[: len(full_declare) - 9])
    s["method-trailing-bytes"] = frame(METHOD, 1, method(60, 10, struct.pack(">IHB", 0, 10, 0)) + b"!")
    s["unknown-method"] = frame(METHOD, 1, method(61, 10)) + frame(METHOD, 1, method(60, 999))
    s["properties-every-flag"] = frame(HEADER, 1, content_header(0, props({
        0: shortstr("application/json"), 1: shortstr("utf-8"),
        2: table(EVERY_TYPE + [("x-warren-publisher", ("S", "forged"))]),
        3: bytes([2]), 4: bytes([9]), 5: shortstr("corr"), 6: shortstr("reply.q"),
        7: shortstr("60000"), 8: shortstr("msg-1"), 9: struct.pack(">Q", 1700000000),
        10: shortstr("type"), 11: shortstr("admin"), 12: shortstr("app"), 13: shortstr("cluster"),
    })))
    s["properties-continuation-flags"] = frame(HEADER, 1, content_header(3, props(
        {0: shortstr("t"), 13: shortstr("c")}, extra_flag_words=(0x8000, 0x0002))))
    s["headers-stamp-and-x-death"] = frame(HEADER, 1, content_header(1, props({2: table([
        ("x-warren-publisher", ("S", "forged")), ("a", ("I", 1)),
        ("x-death", ("A", [("F", [("count", ("l", 1)), ("queue", ("S", "q")),
                                  ("reason", ("S", "expired"))])])),
        ("x-warren-publisher", ("x", b"\xff\xfe")),
    ])}))) + frame(BODY, 1, b"!")
    s["header-too-short"] = frame(HEADER, 1, b"\x00\x3c\x00\x00\x00\x00")
    # 4096 octets in all: accepted at frame_max 4096; then 4097, refused at 4096 only
    s["frame-max-boundary"] = frame(BODY, 1, b"a" * 4088) + frame(BODY, 1, b"b" * 4089)
    s["partial-frame"] = frame(BODY, 1, b"complete") + frame(BODY, 1, b"cut here")[:10]
    start_ok = method(10, 11, table([
        ("product", ("S", "pika")), ("capabilities", ("F", [
            ("publisher_confirms", ("t", True)), ("consumer_cancel_notify", ("t", True)),
            ("connection.blocked", ("t", True)), ("authentication_failure_close", ("t", True))])),
        ("information", ("S", "x" * 300)),
    ]) + shortstr("EXTERNAL") + longstr("") + shortstr("en_US"))
    s["connection-handshake"] = b"".join([
        frame(METHOD, 0, start_ok),
        frame(METHOD, 0, method(10, 31, struct.pack(">HIH", 2047, 131072, 60))),  # tune-ok
        frame(METHOD, 0, method(10, 40, shortstr("/") + shortstr("") + b"\x00")),  # open
    ])
    # field values nested 100 deep (arrays in tables) in the headers property. Deeper nesting
    # once overflowed the stack: see known_crashes() below.
    s["deeply-nested-headers"] = frame(HEADER, 1, content_header(0, props({2: nested_table(100)})))
    return s


def known_crashes() -> dict[str, bytes]:
    """Inputs that crash warren-protocol today, kept out of the corpus so that `cargo test` stays
    replayed by the test `known_crashes_do_not_overflow_the_stack`.

    amq-protocol's field-table parser recurses once per nesting level with no depth limit. On a
    2 MiB stack (a tokio worker's) a release build overflows at about 1250 levels (7.5 KB, well
    inside the negotiated frame_max of 131072), a debug build at about 220 (1.3 KB).
    """
    deep = nested_table(1300)
    # PROBE F1: a `U` (the spec's short int, which the parser accepts) once stopped the nesting scan,
    # so everything after it reached the recursive parser unchecked. 18,000 levels fit in a frame.
    hidden = nested_table(18000, shortstr("a") + b"U\x00\x00")
    return {
        # queue.declare whose arguments table is nested 1300 deep: decode_method
        "stack-overflow-queue-declare-arguments": frame(METHOD, 1, method(
            50, 10, b"\x00\x00" + shortstr("q") + b"\x00" + deep)),
        # a content header whose headers table is nested 1300 deep: headers_table, edit_headers,
        # stamp_header, rewrite_properties
        "stack-overflow-nested-headers": frame(HEADER, 1, content_header(0, props({2: deep}))),
        "stack-overflow-U-then-queue-declare-arguments": frame(METHOD, 1, method(
            50, 10, b"\x00\x00" + shortstr("x") + b"\x00" + hidden)),
        "stack-overflow-U-then-nested-headers": frame(HEADER, 1, content_header(
            0, props({2: nested_table(2000, shortstr("a") + b"U\x00\x00")}))),
        # connection.start sent by a client: its server-properties table is parsed before the
        # handshake refuses the method, so it needs the same bound
        "stack-overflow-client-sent-connection-start": frame(METHOD, 0, method(
            10, 10, b"\x00\x09" + hidden + longstr("EXTERNAL") + longstr("en_US"))),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("seed-*"):
        old.unlink()
    for name, data in seeds().items():
        (OUT / f"seed-{name}").write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {OUT}")
    CRASHES.mkdir(parents=True, exist_ok=True)
    for name, data in known_crashes().items():
        (CRASHES / name).write_bytes(data)
    print(f"wrote {len(known_crashes())} known crashes to {CRASHES}")


if __name__ == "__main__":
    main()
