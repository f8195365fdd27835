"""The JSON inferno-jobs stores, and the parser for what callers send."""

import pytest

from inferno_jobs import codec


def test_callers_json_keeps_64_bit_integers_and_refuses_larger_ones():
    assert codec.parse('[18446744073709551615, -9223372036854775808, 1.5e300]') == [2 ** 64 - 1, -(2 ** 63), 1.5e300]
    assert codec.loads(codec.dumps(codec.parse('{"n": 18446744073709551615}'))) == {"n": 2 ** 64 - 1}
    for text in ("18446744073709551616", "-9223372036854775809", "1" + "0" * 400):
        with pytest.raises(codec.IntegerOutOfRange, match="64 bits"):
            codec.parse(text)
