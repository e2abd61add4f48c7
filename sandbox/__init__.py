"""The sandbox EHR: a development and test tool, never imported by ``service`` or ``smart_app``.

* ``sandbox.fhir_server`` — a real sekmet FHIR server process;
* ``sandbox.seed`` — Flemish ED patients, staff and history;
* ``sandbox.auth`` — a SMART App Launch 2.x authorization server (EHR launch);
* ``sandbox.cds_client`` — the CDS Hooks 2.0 client side (signed JWT, prefetch);
* ``sandbox.ehr`` — the FastAPI "EHR" tying it together, with a FHIR facade;
* ``sandbox.runner`` — ``Sandbox.start(...)``: everything on localhost.
"""
