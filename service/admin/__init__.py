"""The EHR administrator's use cases (issue 6).

* :mod:`service.admin.config` — change a tenant's configuration (one audited version per
  change), configuration as code (YAML export/import with line numbers in errors);
* :mod:`service.admin.changes` — the audit of configuration changes: who, when, what;
* :mod:`service.admin.access` — bootstrap tokens, admin sessions, CSRF tokens, admin events;
* :mod:`service.admin.connection` — "test connection" against an EHR's SMART and FHIR endpoints;
* :mod:`service.admin.partners_io` — the partner directory as CSV and as a FHIR Bundle.

The HTTP layer is ``smart_app/admin.py``; the CLI commands are in ``service/cli.py``.
"""
