"""The demo fraud model: payload contract, scoring sanity and strict input errors."""

from __future__ import annotations

import json

import pytest

from router.demo.model import FraudModel, ModelInputError

LOW_RISK = [25.0, 14.0, 0.05, 3.0, 2.0, 1500.0]
HIGH_RISK = [900.0, 2.0, 0.6, 400.0, 9.0, 30.0]
MEDIUM = [120.0, 20.0, 0.2, 10.0, 4.0, 400.0]


@pytest.fixture(scope="module")
def model() -> FraudModel:
    return FraudModel.load()


def csv_of(*rows: list[float]) -> bytes:
    return "".join(",".join(str(v) for v in row) + "\n" for row in rows).encode()


def test_shipped_weights_define_six_named_features(model: FraudModel) -> None:
    assert model.feature_names == ["amount", "hour", "merchant_risk", "distance_km", "tx_last_24h", "card_age_days"]


def test_csv_and_json_predictions_agree_and_are_probabilities(model: FraudModel) -> None:
    rows = [LOW_RISK, HIGH_RISK, MEDIUM]
    csv_body, csv_type = model.predict_payload(csv_of(*rows), "text/csv", None)
    json_body, json_type = model.predict_payload(json.dumps({"instances": rows}).encode(), "application/json", None)
    csv_scores = [float(line) for line in csv_body.decode().splitlines()]
    json_scores = [p["score"] for p in json.loads(json_body)["predictions"]]
    assert (csv_type, json_type) == ("text/csv", "application/json")
    assert csv_scores == pytest.approx(json_scores, abs=1e-6)
    assert all(0.0 < s < 1.0 for s in csv_scores)


def test_high_risk_row_scores_higher_than_low_risk_row_and_is_flagged(model: FraudModel) -> None:
    body, _ = model.predict_payload(json.dumps({"instances": [LOW_RISK, HIGH_RISK]}).encode(), "application/json", None)
    low, high = json.loads(body)["predictions"]
    assert high["score"] > low["score"]
    assert (low["fraud"], high["fraud"]) == (False, True)


def test_json_instances_may_be_objects_keyed_by_feature_name(model: FraudModel) -> None:
    named = dict(zip(model.feature_names, MEDIUM, strict=True))
    by_name, _ = model.predict_payload(json.dumps({"instances": [named]}).encode(), "application/json", None)
    by_list, _ = model.predict_payload(json.dumps({"instances": [MEDIUM]}).encode(), "application/json", None)
    assert by_name == by_list


def test_csv_answers_one_probability_per_line_with_six_decimals(model: FraudModel) -> None:
    body, _ = model.predict_payload(csv_of(LOW_RISK, MEDIUM), "text/csv; charset=utf-8", "*/*")
    lines = body.decode().splitlines()
    assert len(lines) == 2
    assert all(len(line.split(".")[1]) == 6 for line in lines)


def test_accept_header_chooses_the_response_format(model: FraudModel) -> None:
    body, ctype = model.predict_payload(csv_of(LOW_RISK), "text/csv", "application/json")
    assert ctype == "application/json"
    assert len(json.loads(body)["predictions"]) == 1


def test_malformed_csv_error_names_the_line(model: FraudModel) -> None:
    body = csv_of(LOW_RISK) + b"1,2,abc,4,5,6\n"
    with pytest.raises(ModelInputError, match=r"line 2: field 3 \('abc'\)"):
        model.predict_payload(body, "text/csv", None)


def test_csv_row_with_wrong_column_count_names_the_line(model: FraudModel) -> None:
    with pytest.raises(ModelInputError, match="line 3: expected 6 values"):
        model.predict_payload(csv_of(LOW_RISK, MEDIUM) + b"1,2,3\n", "text/csv", None)


def test_csv_header_row_is_rejected(model: FraudModel) -> None:
    header = ",".join(model.feature_names).encode() + b"\n"
    with pytest.raises(ModelInputError, match=r"line 1: .*header rows are not accepted"):
        model.predict_payload(header + csv_of(LOW_RISK), "text/csv", None)


@pytest.mark.parametrize(
    ("instances", "match"),
    [
        ([[1, 2, 3]], "instance 0: expected 6 values"),
        ([[25, 14, 0.05, 3, 2, 1500], [25, 14, "x", 3, 2, 1500]], r"instance 1: value 2 \('x'\)"),
        ([[25, 14, 0.05, 3, True, 1500]], "instance 0: value 4"),
        ([{"amount": 1}], r"instance 0: missing features \['hour'"),
        ([[25, 14, 1.5, 3, 2, 1500]], r"instance 0: merchant_risk=1.5 is outside \[0, 1\]"),
    ],
)
def test_bad_json_instance_error_names_the_instance(model: FraudModel, instances: object, match: str) -> None:
    with pytest.raises(ModelInputError, match=match):
        model.predict_payload(json.dumps({"instances": instances}).encode(), "application/json", None)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"instances": []}'])
def test_malformed_json_document_is_rejected(model: FraudModel, body: bytes) -> None:
    with pytest.raises(ModelInputError):
        model.predict_payload(body, "application/json", None)


@pytest.mark.parametrize("content_type", ["application/x-protobuf", None, ""])
def test_unknown_content_type_is_rejected(model: FraudModel, content_type: str | None) -> None:
    with pytest.raises(ModelInputError, match="unsupported Content-Type"):
        model.predict_payload(csv_of(LOW_RISK), content_type, None)


def test_empty_csv_is_rejected(model: FraudModel) -> None:
    with pytest.raises(ModelInputError, match="empty CSV"):
        model.predict_payload(b"\n\n", "text/csv", None)


def test_extreme_inputs_do_not_overflow(model: FraudModel) -> None:
    scores = model.predict([[1_000_000, 3, 1, 40_000, 10_000, 0], [0, 15, 0, 0, 0, 36_500]])
    assert scores[0] > 0.999
    assert scores[1] < 0.001
