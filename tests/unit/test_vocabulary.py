"""shared.vocabulary: each word once, and everything built from it agrees with it."""

from __future__ import annotations

import itertools
import json

import pytest

from cloud.ai.builtin import PINNING_DAYS
from cloud.ai.yields import BIOLOGICAL_EFFICIENCY
from edge.homeassistant import SENSORS
from firmware_sim.closed_loop import SCENARIOS
from firmware_sim.physics import RESPIRATION_MG_PER_KG_H, ROLES
from shared.models import KNOWN_METRICS, METRIC_LIMITS, SET_FORM_ROLES
from shared.profiles import DEFAULT_SAFETY, PROFILES
from shared.vocabulary import (
    ACTUATOR_LABELS,
    ACTUATOR_ROLES,
    BANDED_METRICS,
    DERIVED_METRICS,
    METRICS,
    SPECIES,
    SPECIES_LABELS,
    STAGE_LABELS,
    STAGES,
    derive,
    vocabulary_document,
)


def test_every_word_has_a_label_and_no_word_is_spelled_twice() -> None:
    for words, labels in ((SPECIES, SPECIES_LABELS), (STAGES, STAGE_LABELS),
                          (ACTUATOR_ROLES, ACTUATOR_LABELS)):
        assert len(set(words)) == len(words)
        assert tuple(labels) == words
    assert set(BANDED_METRICS) <= set(METRICS)
    assert not set(DERIVED_METRICS) & set(METRICS)
    for metric in METRICS.values():
        assert metric.low < metric.high and metric.decimals >= 0 and metric.label


def test_what_is_built_from_the_vocabulary_covers_it() -> None:
    assert set(PROFILES) == set(itertools.product(SPECIES, STAGES))
    assert set(RESPIRATION_MG_PER_KG_H) == set(itertools.product(SPECIES, STAGES))
    assert set(SCENARIOS) == set(itertools.product(SPECIES, STAGES))
    assert set(PINNING_DAYS) == set(BIOLOGICAL_EFFICIENCY) == set(SPECIES)
    assert set(DEFAULT_SAFETY) == set(ACTUATOR_ROLES) == set(ROLES)
    assert set(SET_FORM_ROLES.values()) == set(ACTUATOR_ROLES)
    assert KNOWN_METRICS == tuple(METRICS)
    assert METRIC_LIMITS == {m.name: (m.low, m.high) for m in METRICS.values()}
    assert {name: (label, unit) for name, (label, unit, _) in SENSORS.items()} == {
        m.name: (m.label, m.unit) for m in METRICS.values()
    }


def test_derived_metrics() -> None:
    # FAO-56 table 2.3: e°(20 °C) = 2.338 kPa; dew point of 20 °C / 50 % is 9.3 °C.
    values = derive(20.0, 50.0)
    assert values["vpd_kpa"] == pytest.approx(1.169, abs=0.002)
    assert values["dew_point_c"] == pytest.approx(9.26, abs=0.05)
    assert derive(20.0, 0.0)["dew_point_c"] is None


def test_document_is_json_and_complete() -> None:
    doc = json.loads(json.dumps(vocabulary_document()))
    assert [s["id"] for s in doc["species"]] == list(SPECIES)
    assert [s["id"] for s in doc["stages"]] == list(STAGES)
    assert [r["id"] for r in doc["actuator_roles"]] == list(ACTUATOR_ROLES)
    assert [m["name"] for m in doc["metrics"] if m["banded"]] == list(BANDED_METRICS)
    assert [d["name"] for d in doc["derived_metrics"]] == list(DERIVED_METRICS)
