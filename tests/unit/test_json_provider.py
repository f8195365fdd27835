"""The API's JSON provider: orjson for responses, with Flask's encoder behind it for what orjson refuses."""

import dataclasses
import decimal
import json
import math

import numpy as np


def test_responses_are_standard_json_in_order_and_utf8(make_app):
    app = make_app()
    text = app.json.dumps({"z": 1, "a": "caf\u00e9", "nan": math.nan, "vector": np.asarray([0.25, -1.5], "float32")})
    assert json.loads(text) == {"z": 1, "a": "caf\u00e9", "nan": None, "vector": [0.25, -1.5]}
    assert list(json.loads(text)) == ["z", "a", "nan", "vector"]  # keys as given, not sorted
    assert "NaN" not in text  # json would write NaN, which no JSON parser has to accept


def test_what_orjson_refuses_is_written_by_flasks_encoder(make_app):
    app = make_app()
    assert json.loads(app.json.dumps({"n": 2 ** 70})) == {"n": 2 ** 70}  # over 64 bits

    @dataclasses.dataclass
    class Point:
        x: int

    assert json.loads(app.json.dumps({"p": Point(3), "d": decimal.Decimal("1.5")})) == {"p": {"x": 3}, "d": "1.5"}


def test_a_job_object_round_trips_through_the_api(client):
    r = client.post("/jobs", json={"type": "predict", "model": "iris", "input": {"features": [[5.1, 3.5, 1.4, 0.2]]},
                                   "metadata": {"note": "\u00fcber", "n": 2 ** 63 - 1}})
    assert r.status_code == 202 and r.mimetype == "application/json"
    assert r.get_json()["metadata"] == {"note": "\u00fcber", "n": 2 ** 63 - 1}
