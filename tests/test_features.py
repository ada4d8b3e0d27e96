import pytest

from router.config import CallerConfig, UrgencyConfig
from router.features import MAX_DEADLINE_MS, FeatureExtractor, RequestError, parse_prefer


def extractor(clamped: list[str] | None = None) -> FeatureExtractor:
    callers = [CallerConfig(api_key="team-a-secret-key", tenant="team-a", max_urgency="critical"),
               CallerConfig(api_key="team-b-secret-key", tenant="team-b", max_urgency="normal")]
    hook = clamped.append if clamped is not None else None
    return FeatureExtractor(UrgencyConfig(), callers, "X-Api-Key", on_clamp=hook)


def test_defaults_for_a_bare_request() -> None:
    f = extractor().extract("m", {}, 10)
    assert (f.caller, f.urgency, f.priority, f.deadline_ms, f.accepts_async) == ("anonymous", "normal", 1, None, False)
    assert f.content_type == "application/octet-stream"


def test_anonymous_callers_cannot_claim_critical_and_the_clamp_is_counted() -> None:
    clamped: list[str] = []
    f = extractor(clamped).extract("m", {"x-urgency": "critical"}, 10)
    assert (f.urgency, f.priority) == ("high", 2)
    assert clamped == ["m"]


def test_a_known_key_maps_to_its_tenant_and_ceiling() -> None:
    clamped: list[str] = []
    ex = extractor(clamped)
    a = ex.extract("m", {"x-api-key": "team-a-secret-key", "x-urgency": "Critical"}, 10)
    assert (a.caller, a.urgency) == ("team-a", "critical")
    b = ex.extract("m", {"x-api-key": "team-b-secret-key", "x-urgency": "high"}, 10)
    assert (b.caller, b.urgency) == ("team-b", "normal")
    assert clamped == ["m"]


def test_an_unknown_key_is_refused_rather_than_silently_downgraded() -> None:
    with pytest.raises(RequestError) as info:
        extractor().extract("m", {"x-api-key": "guess"}, 10)
    assert info.value.status == 403


@pytest.mark.parametrize(("header", "value"), [("x-urgency", "asap"), ("x-deadline-ms", "soon"),
                                               ("x-deadline-ms", "0"), ("x-deadline-ms", "-5"),
                                               ("x-deadline-ms", "99999999999")])
def test_malformed_urgency_or_deadline_is_a_400_naming_the_header(header: str, value: str) -> None:
    with pytest.raises(RequestError) as info:
        extractor().extract("m", {header: value}, 10)
    assert info.value.status == 400
    assert header.lower() in info.value.message.lower()


def test_deadline_and_prefer_are_read() -> None:
    f = extractor().extract("m", {"x-deadline-ms": "250", "prefer": "respond-async, wait=10"}, 10)
    assert (f.deadline_ms, f.accepts_async, f.wait_s) == (250, True, 10.0)


@pytest.mark.parametrize(
    ("value", "respond_async", "wait"),
    [(None, False, None), ("respond-async", True, None), ("wait=5", False, 5.0), ("RESPOND-ASYNC;x=1", True, None),
     ('wait="7", respond-async', True, 7.0), ("wait=soon", False, None), ("wait=5X", False, None),
     ("handling=lenient", False, None)],
)
def test_prefer_follows_rfc_7240_and_ignores_what_it_does_not_know(value: str | None, respond_async: bool,
                                                                   wait: float | None) -> None:
    p = parse_prefer(value)
    assert (p.respond_async, p.wait_s) == (respond_async, wait)


def test_a_refused_api_key_is_an_access_denied_error_naming_the_header() -> None:
    with pytest.raises(RequestError) as info:
        extractor().extract("m", {"x-api-key": "guess"}, 10)
    err = info.value
    assert (err.status, err.error_type, err.retry_after_s) == (403, "AccessDeniedException", None)
    assert "x-api-key" in err.message
    assert str(err) == err.message


@pytest.mark.parametrize(("header", "value"), [("x-urgency", "asap"), ("x-deadline-ms", "0")])
def test_a_malformed_header_is_a_validation_error(header: str, value: str) -> None:
    with pytest.raises(RequestError) as info:
        extractor().extract("m", {header: value}, 10)
    assert info.value.error_type == "ValidationError"


def test_an_unknown_urgency_lists_the_levels() -> None:
    with pytest.raises(RequestError) as info:
        extractor().extract("m", {"x-urgency": "asap"}, 10)
    assert "use one of critical, high, normal, low" in info.value.message


@pytest.mark.parametrize("deadline", [1, MAX_DEADLINE_MS])
def test_deadlines_from_one_millisecond_to_a_day_are_accepted(deadline: int) -> None:
    assert extractor().extract("m", {"x-deadline-ms": str(deadline)}, 10).deadline_ms == deadline


def test_the_request_is_described_as_it_came() -> None:
    f = extractor().extract("fraud", {"content-type": "text/csv"}, 1234)
    assert (f.model, f.payload_bytes, f.content_type) == ("fraud", 1234, "text/csv")


def test_a_key_without_max_urgency_may_claim_any_level() -> None:
    callers = [CallerConfig(api_key="ops-secret-key", tenant="ops")]
    f = FeatureExtractor(UrgencyConfig(), callers, "X-Api-Key").extract(
        "m", {"x-api-key": "ops-secret-key", "x-urgency": "critical"}, 10)
    assert (f.caller, f.urgency, f.priority) == ("ops", "critical", 3)


def test_prefer_parameters_after_a_semicolon_are_ignored() -> None:
    assert parse_prefer("wait=5;a=1;b=2, respond-async").wait_s == 5.0
