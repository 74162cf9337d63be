import hashlib

import pytest

from attestation.binding import expected_report_data, verify_binding
from attestation.errors import BindingError, Code

NONCE = bytes(range(32))
SUITE = b"\x00\x20\x00\x01\x00\x02"
KEM = b"k" * 32
SIG = b"s" * 32


def test_layout_matches_design() -> None:
    manual = hashlib.sha512(
        b"sovereign/v1 evidence"
        + b"\x00\x20"
        + NONCE
        + b"\x00\x06"
        + SUITE
        + b"\x00\x20"
        + KEM
        + b"\x00\x20"
        + SIG
    ).digest()
    assert expected_report_data(NONCE, SUITE, KEM, SIG) == manual
    verify_binding(manual, NONCE, SUITE, KEM, SIG)


@pytest.mark.parametrize("which", range(4))
def test_any_changed_input_breaks_binding(which: int) -> None:
    args = [NONCE, SUITE, KEM, SIG]
    good = expected_report_data(*args)
    args[which] = args[which][:-1] + bytes([args[which][-1] ^ 1])
    with pytest.raises(BindingError) as exc:
        verify_binding(good, *args)
    assert exc.value.code is Code.BINDING_MISMATCH


def test_length_prefix_prevents_shifting_bytes_between_fields() -> None:
    a = expected_report_data(b"ab", b"c", KEM, SIG)
    b = expected_report_data(b"a", b"bc", KEM, SIG)
    assert a != b


def test_empty_input_is_typed_error() -> None:
    with pytest.raises(BindingError) as exc:
        expected_report_data(b"", SUITE, KEM, SIG)
    assert exc.value.code is Code.BINDING_INPUT_INVALID
