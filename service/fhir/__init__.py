"""FHIR adapters: terminology (codes and URLs of the built guide), mapping (domain to
resources) and the FHIR client."""
