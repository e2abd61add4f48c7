"""The monitoring Measure and the MeasureReport the service writes on it
(``service.monitoring.measure_report``): FHIR's population codes, the figure on the group."""

from __future__ import annotations

from datetime import UTC, date, datetime

from service import monitoring
from service.fhir import terminology
from service.monitoring import Figure, Figures, Period, Value
from tests.support.validator import ProfileValidator

MEASURE_REPORT = "http://hl7.org/fhir/StructureDefinition/MeasureReport"
INITIAL_POPULATION = {
    "system": "http://terminology.hl7.org/CodeSystem/measure-population",
    "code": "initial-population",
}


def _codes(concept: dict[str, object]) -> list[tuple[object, object]]:
    codings = concept["coding"]
    assert isinstance(codings, list)
    return [(c["system"], c["code"]) for c in codings]


def _report() -> dict[str, object]:
    day = date(2026, 5, 18)
    values = {figure: Value(2) for figure in Figure}
    values[Figure.REFERRALS] = Value(2, {"vk": 1, "police": 1})
    return monitoring.measure_report(
        Figures(Period(day, day), values),
        reporter="UZ Gent",
        generated_at=datetime(2026, 5, 19, 8, tzinfo=UTC),
    )


def test_each_figure_is_a_group_whose_population_is_the_cohorts_initial_population(
    fhir_validator: ProfileValidator,
) -> None:
    """Measure.group.population.code is bound (extensible) to FHIR's measure-population, and
    the Measure is a cohort measure: its one population is initial-population, in the
    Measure and in every group and stratum of the report. Before, both put the guide's
    figure code there, which no reader of MeasureReports knows as a population. Each
    figure is still found, by the group's code."""
    measure = terminology.guide().examples[f"Measure/{monitoring.MEASURE_ID}"]
    report = _report()
    initial = (INITIAL_POPULATION["system"], INITIAL_POPULATION["code"])
    figure_system = terminology.code_system_url("monitoring-figure")

    for groups in (measure["group"], report["group"]):
        assert isinstance(groups, list)
        assert [_codes(g["code"]) for g in groups] == [[(figure_system, f.value)] for f in Figure]
        for group in groups:
            assert [_codes(p["code"]) for p in group["population"]] == [[initial]]
    strata = [
        stratum
        for group in report["group"]  # type: ignore[attr-defined]
        for stratifier in group.get("stratifier", [])
        for stratum in stratifier["stratum"]
    ]
    assert strata
    for stratum in strata:
        assert [_codes(p["code"]) for p in stratum["population"]] == [[initial]]
    assert fhir_validator.validate(report, MEASURE_REPORT) == []
