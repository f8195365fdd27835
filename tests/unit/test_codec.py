"""The JSON inferno-jobs stores, and the parser for what callers send."""

import pytest

from inferno_jobs import codec


def test_callers_json_keeps_64_bit_integers_and_refuses_larger_ones():
    assert codec.parse('[18446744073709551615, -9223372036854775808, 1.5e300]') == [2 ** 64 - 1, -(2 ** 63), 1.5e300]
    assert codec.loads(codec.dumps(codec.parse('{"n": 18446744073709551615}'))) == {"n": 2 ** 64 - 1}
    for text in ("18446744073709551616", "-9223372036854775809", "1" + "0" * 400):
        with pytest.raises(codec.UnstorableJSON, match="64 bits"):
            codec.parse(text)


def test_callers_json_must_be_text_and_shallow_enough_to_store():
    # a surrogate pair is text
    assert codec.parse('{"ok": "caf\\u00e9 \\ud83d\\ude00"}') == {"ok": "caf\u00e9 \U0001f600"}
    for text in ('"\\ud800"', '{"\\udfff": 1}', '["fine", {"deep": ["x\\ud800y"]}]'):
        with pytest.raises(codec.UnstorableJSON, match="lone surrogate"):
            codec.parse(text)
    deepest = "[" * codec.MAX_DEPTH + "]" * codec.MAX_DEPTH
    assert codec.loads(codec.dumps(codec.parse(deepest)))  # as deep as allowed: parsed and storable
    for depth in (codec.MAX_DEPTH + 1, 100_000):
        with pytest.raises(codec.UnstorableJSON, match="nested deeper"):
            codec.parse("[" * depth + "]" * depth)
