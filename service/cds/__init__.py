"""CDS Hooks 2.0 service: discovery, the Kindreflex card rules, JWT checks and feedback.

``vocabulary`` (the guide's codes the rules need), ``situation`` (what a hook request
says about the patient, read from FHIR JSON), ``rules`` (pure card rules), ``cards``
(the CDS Hooks card in the user's language), ``prefetch`` (templates and the one FHIR
request when prefetch is missing), ``auth`` (the EHR's JWT), ``router`` (HTTP).
"""
