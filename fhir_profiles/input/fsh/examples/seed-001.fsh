// The whole seed 001 worked case (three episodes) as one transaction Bundle.
// Every entry but the Provenances is a conditional create on its business identifier
// (idempotent). A Provenance has no identifier in R4: as the service writes it, it is a
// plain create (POST) in the same transaction as the resources it names, one per save
// (the nurse's triage saves, the social worker's step saves), each naming what that save
// wrote and its author; the service sends a transaction once (the outbox asks the server
// for a resource only it creates before a retry), so it is not written twice.
// References between entries are urn:uuid; Patient, Encounter and Practitioner live on
// the hospital's server. The Flag is the concern's state after episode 3 (raised by the
// nurse at episode 2, updated by each step the social worker saved). Generated once from
// the story in content.fsh; edit freely.

Instance: Seed001Noah
InstanceOf: KindreflexChild
Title: "Seed 001: Noah"
Usage: #inline
* insert ChildNoahContent(5eed0001-0000-4000-8000-000000000001, Patient/kr-mother-001)

Instance: Seed001Emma
InstanceOf: KindreflexChild
Title: "Seed 001: Emma"
Usage: #inline
* insert ChildEmmaContent(5eed0001-0000-4000-8000-000000000002, Patient/kr-mother-001)

Instance: Seed001Step1
InstanceOf: KindreflexStep1Finding
Title: "Seed 001 episode 1: step 1"
Usage: #inline
* insert FindingCommon(5eed0001-0000-4000-8000-000000000011, Patient/kr-mother-001, Encounter/kr-enc-1, 2026-01-12T10:15:00+01:00, Practitioner/kr-nurse-1)
* insert Step1Content(urn:uuid:5eed0001-0000-4000-8000-000000000001, urn:uuid:5eed0001-0000-4000-8000-000000000002)

Instance: Seed001Step2a
InstanceOf: KindreflexStep2Finding
Title: "Seed 001 episode 1: step 2, no concern"
Usage: #inline
* insert FindingCommon(5eed0001-0000-4000-8000-000000000012, Patient/kr-mother-001, Encounter/kr-enc-1, 2026-01-12T10:25:00+01:00, Practitioner/kr-nurse-1)
* insert Step2NoConcernContent

Instance: Seed001Step3
InstanceOf: KindreflexStep3Finding
Title: "Seed 001 episode 1: step 3"
Usage: #inline
* insert FindingCommon(5eed0001-0000-4000-8000-000000000013, Patient/kr-mother-001, Encounter/kr-enc-1, 2026-01-12T10:40:00+01:00, Practitioner/kr-nurse-1)
* insert Step3Content(urn:uuid:5eed0001-0000-4000-8000-000000000001, urn:uuid:5eed0001-0000-4000-8000-000000000002)

Instance: Seed001Step2b
InstanceOf: KindreflexStep2Finding
Title: "Seed 001 episode 2: step 2, niet-pluis"
Usage: #inline
* insert FindingCommon(5eed0001-0000-4000-8000-000000000017, Patient/kr-mother-001, Encounter/kr-enc-2, 2026-03-09T14:00:00+01:00, Practitioner/kr-nurse-1)
* insert Step2Content(urn:uuid:5eed0001-0000-4000-8000-000000000001, urn:uuid:5eed0001-0000-4000-8000-000000000002)

Instance: Seed001Step4
InstanceOf: KindreflexStep4Finding
Title: "Seed 001 episode 2: step 4"
Usage: #inline
* insert FindingCommon(5eed0001-0000-4000-8000-000000000014, Patient/kr-mother-001, Encounter/kr-enc-2, 2026-03-09T16:00:00+01:00, Practitioner/kr-social-1)
* insert Step4Content(urn:uuid:5eed0001-0000-4000-8000-000000000001, urn:uuid:5eed0001-0000-4000-8000-000000000002)

Instance: Seed001Step5
InstanceOf: KindreflexStep5Finding
Title: "Seed 001 episode 3: step 5"
Usage: #inline
* insert FindingCommon(5eed0001-0000-4000-8000-000000000015, Patient/kr-mother-001, Encounter/kr-enc-3, 2026-05-18T11:30:00+02:00, Practitioner/kr-social-1)
* insert Step5Content(urn:uuid:5eed0001-0000-4000-8000-000000000001, urn:uuid:5eed0001-0000-4000-8000-000000000002)

Instance: Seed001Step6
InstanceOf: KindreflexStep6Finding
Title: "Seed 001 episode 3: step 6"
Usage: #inline
* insert FindingCommon(5eed0001-0000-4000-8000-000000000016, Patient/kr-mother-001, Encounter/kr-enc-3, 2026-05-18T13:00:00+02:00, Practitioner/kr-social-1)
* insert Step6Content(urn:uuid:5eed0001-0000-4000-8000-000000000001, urn:uuid:5eed0001-0000-4000-8000-000000000002, urn:uuid:5eed0001-0000-4000-8000-000000000021)

Instance: Seed001Vk
InstanceOf: KindreflexPartnerOrganization
Title: "Seed 001: VK Oost-Vlaanderen"
Usage: #inline
* insert VkContent

Instance: Seed001Referral
InstanceOf: KindreflexReferral
Title: "Seed 001 episode 3: referral to the VK"
Usage: #inline
* insert ReferralContent(5eed0001-0000-4000-8000-000000000021, Patient/kr-mother-001, Encounter/kr-enc-3, Practitioner/kr-social-1, urn:uuid:5eed0001-0000-4000-8000-000000000020, urn:uuid:5eed0001-0000-4000-8000-000000000015, urn:uuid:5eed0001-0000-4000-8000-000000000001, urn:uuid:5eed0001-0000-4000-8000-000000000002)

Instance: Seed001Concern
InstanceOf: KindreflexOpenConcern
Title: "Seed 001: the open concern"
Usage: #inline
* insert ConcernContent(5eed0001-0000-4000-8000-000000000030, Patient/kr-mother-001, Practitioner/kr-nurse-1)

Instance: Seed001Provenance1
InstanceOf: KindreflexProvenance
Title: "Seed 001 episode 1: the nurse's triage save"
Usage: #inline
* target[0].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000001"
* target[1].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000002"
* target[2].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000011"
* target[3].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000012"
* target[4].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000013"
* insert ProvenanceAuthor(Practitioner/kr-nurse-1, 2026-01-12T10:41:00+01:00, CREATE)

Instance: Seed001Provenance2
InstanceOf: KindreflexProvenance
Title: "Seed 001 episode 2: the nurse's triage save (niet-pluis, the concern raised)"
Usage: #inline
* target[0].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000017"
* target[1].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000030"
* insert ProvenanceAuthor(Practitioner/kr-nurse-1, 2026-03-09T14:01:00+01:00, CREATE)

Instance: Seed001Provenance3
InstanceOf: KindreflexProvenance
Title: "Seed 001 episode 2: the social worker's step 4 save"
Usage: #inline
* target[0].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000014"
* target[1].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000030"
* insert ProvenanceAuthor(Practitioner/kr-social-1, 2026-03-09T16:01:00+01:00, UPDATE)

Instance: Seed001Provenance4
InstanceOf: KindreflexProvenance
Title: "Seed 001 episode 3: the social worker's step 5 save"
Usage: #inline
* target[0].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000015"
* target[1].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000030"
* insert ProvenanceAuthor(Practitioner/kr-social-1, 2026-05-18T11:31:00+02:00, UPDATE)

Instance: Seed001Provenance5
InstanceOf: KindreflexProvenance
Title: "Seed 001 episode 3: the social worker's step 6 save (the referral)"
Usage: #inline
* target[0].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000021"
* target[1].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000016"
* target[2].reference = "urn:uuid:5eed0001-0000-4000-8000-000000000030"
* insert ProvenanceAuthor(Practitioner/kr-social-1, 2026-05-18T13:01:00+02:00, UPDATE)

Instance: Seed001Bundle
InstanceOf: Bundle
Title: "Seed 001 worked case: three episodes as one transaction"
Description: "The training workshop case (seed 001): a single mother, a boy of 3 and a girl of 8 (support); a new partner and school absence (niet-pluis, concerning but willing); bruises and care stopped (safety not restored, referral to the VK)."
Usage: #example
* type = #transaction
* entry[0].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000001"
* entry[0].resource = Seed001Noah
* entry[0].request.method = #POST
* entry[0].request.url = "RelatedPerson"
* entry[0].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/child%7C5eed0001-0000-4000-8000-000000000001&patient=Patient/kr-mother-001"
* entry[1].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000002"
* entry[1].resource = Seed001Emma
* entry[1].request.method = #POST
* entry[1].request.url = "RelatedPerson"
* entry[1].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/child%7C5eed0001-0000-4000-8000-000000000002&patient=Patient/kr-mother-001"
* entry[2].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000011"
* entry[2].resource = Seed001Step1
* entry[2].request.method = #POST
* entry[2].request.url = "Observation"
* entry[2].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/finding%7C5eed0001-0000-4000-8000-000000000011"
* entry[3].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000012"
* entry[3].resource = Seed001Step2a
* entry[3].request.method = #POST
* entry[3].request.url = "Observation"
* entry[3].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/finding%7C5eed0001-0000-4000-8000-000000000012"
* entry[4].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000013"
* entry[4].resource = Seed001Step3
* entry[4].request.method = #POST
* entry[4].request.url = "Observation"
* entry[4].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/finding%7C5eed0001-0000-4000-8000-000000000013"
* entry[5].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000017"
* entry[5].resource = Seed001Step2b
* entry[5].request.method = #POST
* entry[5].request.url = "Observation"
* entry[5].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/finding%7C5eed0001-0000-4000-8000-000000000017"
* entry[6].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000030"
* entry[6].resource = Seed001Concern
* entry[6].request.method = #POST
* entry[6].request.url = "Flag"
* entry[6].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/concern%7C5eed0001-0000-4000-8000-000000000030"
* entry[7].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000014"
* entry[7].resource = Seed001Step4
* entry[7].request.method = #POST
* entry[7].request.url = "Observation"
* entry[7].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/finding%7C5eed0001-0000-4000-8000-000000000014"
* entry[8].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000020"
* entry[8].resource = Seed001Vk
* entry[8].request.method = #POST
* entry[8].request.url = "Organization"
* entry[8].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/partner%7Cvk-oost-vlaanderen"
* entry[9].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000015"
* entry[9].resource = Seed001Step5
* entry[9].request.method = #POST
* entry[9].request.url = "Observation"
* entry[9].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/finding%7C5eed0001-0000-4000-8000-000000000015"
* entry[10].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000021"
* entry[10].resource = Seed001Referral
* entry[10].request.method = #POST
* entry[10].request.url = "ServiceRequest"
* entry[10].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/referral%7C5eed0001-0000-4000-8000-000000000021"
* entry[11].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000016"
* entry[11].resource = Seed001Step6
* entry[11].request.method = #POST
* entry[11].request.url = "Observation"
* entry[11].request.ifNoneExist = "identifier=https://kindreflex-ed.be/fhir/sid/finding%7C5eed0001-0000-4000-8000-000000000016"
* entry[12].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000041"
* entry[12].resource = Seed001Provenance1
* entry[12].request.method = #POST
* entry[12].request.url = "Provenance"
* entry[13].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000042"
* entry[13].resource = Seed001Provenance2
* entry[13].request.method = #POST
* entry[13].request.url = "Provenance"
* entry[14].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000043"
* entry[14].resource = Seed001Provenance3
* entry[14].request.method = #POST
* entry[14].request.url = "Provenance"
* entry[15].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000044"
* entry[15].resource = Seed001Provenance4
* entry[15].request.method = #POST
* entry[15].request.url = "Provenance"
* entry[16].fullUrl = "urn:uuid:5eed0001-0000-4000-8000-000000000045"
* entry[16].resource = Seed001Provenance5
* entry[16].request.method = #POST
* entry[16].request.url = "Provenance"
