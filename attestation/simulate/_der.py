"""The few DER encoders the simulator needs for vendor extensions (cryptography has no generic encoder)."""

from __future__ import annotations


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _int_content(value: int) -> bytes:
    # Two's complement, minimal length; the simulator only ever encodes non-negative values.
    if value < 0:
        raise ValueError("negative INTEGER not supported")
    return value.to_bytes(value.bit_length() // 8 + 1, "big")


def integer(value: int) -> bytes:
    return tlv(0x02, _int_content(value))


def enumerated(value: int) -> bytes:
    return tlv(0x0A, _int_content(value))


def boolean(value: bool) -> bytes:
    return tlv(0x01, b"\xff" if value else b"\x00")


def octet_string(value: bytes) -> bytes:
    return tlv(0x04, value)


def ia5_string(value: str) -> bytes:
    return tlv(0x16, value.encode("ascii"))


def sequence(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))
