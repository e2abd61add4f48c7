"""Helpers for the tests: processes, validators, the sandbox EHR."""
