"""Fixtures of the FHIR guide tests: the shared profile validator."""

from tests.support.validator import fhir_validator

__all__ = ["fhir_validator"]
