"""Kindreflex-ED: the Flemish Kindreflex in the hospital emergency department.

A CDS Hooks service and a SMART on FHIR app. The EHR stays the system of record: every
finding is a FHIR resource on the hospital's FHIR server.
"""
