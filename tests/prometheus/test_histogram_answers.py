"""Histogram answers (``sum by (le) (...)``) for the relative gates are data from outside too: parsed
strictly; a bad answer is no data for that part, with the reason, and nothing of the body is shown."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kondense.operator.providers import MalformedAnswer, parse_buckets

SECRET = "s3cr3t-from-the-body"


def buckets(*pairs: tuple[Any, Any]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"le": le}, "value": [1.0, v]} for le, v in pairs],
        },
    }


def test_a_histogram_in_any_order_comes_back_sorted_with_inf_last() -> None:
    body = buckets(("+Inf", "12"), ("0.005", "10"), ("0.001", "4"))
    assert parse_buckets(body) == [(0.001, 4.0), (0.005, 10.0), (math.inf, 12.0)]
    assert parse_buckets(buckets()) is None  # no samples: no data


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([], "JSON list"),
        ({"status": "error"}, "not 'success'"),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}}, "must be a vector"),
        (buckets(("0.1", "3")), "no +Inf bucket"),
        (buckets(("fast", "3"), ("+Inf", "3")), "'le' label is not a number"),
        (buckets(("NaN", "3"), ("+Inf", "3")), "NaN or repeated"),
        (buckets(("0.1", "3"), ("0.10", "3"), ("+Inf", "3")), "NaN or repeated"),
        (buckets(("0.1", "-1"), ("+Inf", "3")), "finite non-negative"),
        (buckets(("0.1", "NaN"), ("+Inf", "3")), "finite non-negative"),
        (buckets(("0.1", "+Inf"), ("+Inf", "3")), "finite non-negative"),
        (buckets(("0.1", SECRET), ("+Inf", "3")), "not a number"),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "2"]}]}}, "labels"),
        (
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "2"]}]},
            },
            "'le'",
        ),
        (buckets(*[(str(i), "1") for i in range(300)]), "more than 256"),
    ],
)
def test_malformed_histograms_are_refused_without_echoing_the_body(body: Any, says: str) -> None:
    with pytest.raises(MalformedAnswer) as caught:
        parse_buckets(body)
    assert says in str(caught.value)
    assert SECRET not in str(caught.value)
