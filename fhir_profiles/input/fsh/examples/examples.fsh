// Standalone valid examples, one (or more) per profile, with relative references to the
// resources of the hospital's FHIR server (Patient, Encounter, Practitioner).

Instance: ChildNoah
InstanceOf: KindreflexChild
Title: "Example: Noah, 3, lives with his mother"
Usage: #example
* insert ChildNoahContent(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a01, Patient/kr-mother-001)

Instance: ChildEmma
InstanceOf: KindreflexChild
Title: "Example: Emma, 8, lives with her mother"
Usage: #example
* insert ChildEmmaContent(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a02, Patient/kr-mother-001)

Instance: ExpectingChildPartner
InstanceOf: KindreflexExpectingChild
Title: "Example: the patient's partner is pregnant"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a10, Patient/kr-father-002, Encounter/kr-enc-9, 2026-11-23T09:12:00+01:00, Practitioner/kr-nurse-1)
* code = RecordTypeCS#expecting-child
* valueCodeableConcept = PregnancyOfCS#partner "De partner van de cliënt is zwanger"
* component[expectedDeliveryDate].code.coding[loinc] = $loinc#11778-8 "Delivery date Estimated"
* component[expectedDeliveryDate].valueDateTime = "2027-04-15"

Instance: Step1Example
InstanceOf: KindreflexStep1Finding
Title: "Example: step 1, two children"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a11, Patient/kr-mother-001, Encounter/kr-enc-1, 2026-01-12T10:15:00+01:00, Practitioner/kr-nurse-1)
* insert Step1Content(RelatedPerson/ChildNoah, RelatedPerson/ChildEmma)

Instance: Step1Expecting
InstanceOf: KindreflexStep1Finding
Title: "Example: step 1, no children, the partner is pregnant"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a22, Patient/kr-father-002, Encounter/kr-enc-9, 2026-11-23T09:12:00+01:00, Practitioner/kr-nurse-1)
* code = KindreflexStepCS#step-1
* valueBoolean = true
* hasMember[0].reference = "Observation/ExpectingChildPartner"
* component[planVersion].valueString = "kindreflex-generic-2021"

Instance: Step1NoChildren
InstanceOf: KindreflexStep1Finding
Title: "Example: step 1, no children and none expected"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a12, Patient/kr-adult-003, Encounter/kr-enc-7, 2026-11-23T08:05:00+01:00, Practitioner/kr-nurse-1)
* code = KindreflexStepCS#step-1
* valueBoolean = false

Instance: Step2Example
InstanceOf: KindreflexStep2Finding
Title: "Example: step 2, niet-pluis with reasons"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a13, Patient/kr-mother-001, Encounter/kr-enc-2, 2026-03-09T14:00:00+01:00, Practitioner/kr-nurse-1)
* insert Step2Content(RelatedPerson/ChildNoah, RelatedPerson/ChildEmma)

Instance: Step2AcuteTrigger
InstanceOf: KindreflexStep2Finding
Title: "Example: step 2 after a Hague trigger, unclear with acute danger"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a14, Patient/kr-adult-004, Encounter/kr-enc-8, 2026-11-22T23:10:00+01:00, Practitioner/kr-nurse-2)
* code = KindreflexStepCS#step-2
* valueCodeableConcept = SafetyAssessmentCS#unclear "Onduidelijk"
* component[reason][0].valueString = "Aangemeld na partnergeweld; kinderen thuis bij de partner"
* component[urgency].valueBoolean = true
* component[trigger][0].valueCodeableConcept = HagueTriggerCS#domestic-violence

Instance: Step3Example
InstanceOf: KindreflexStep3Finding
Title: "Example: step 3, support as a parent"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a15, Patient/kr-father-002, Encounter/kr-enc-9, 2026-11-23T09:20:00+01:00, Practitioner/kr-nurse-1)
* code = KindreflexStepCS#step-3
* component[supportAction][0].valueCodeableConcept = SupportActionCS#discuss-impact
* component[supportAction][1].valueCodeableConcept = SupportActionCS#kind-en-gezin-start
* component[service][0].valueCodeableConcept = PartnerTypeCS#kind-en-gezin

Instance: Step4Example
InstanceOf: KindreflexStep4Finding
Title: "Example: step 4, concerning but willing"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a16, Patient/kr-mother-001, Encounter/kr-enc-2, 2026-03-09T16:00:00+01:00, Practitioner/kr-social-1)
* insert Step4Content(RelatedPerson/ChildNoah, RelatedPerson/ChildEmma)
* component[childConsent][0].valueBoolean = true
* component[childConsent][0].extension[0].url = "https://kindreflex-ed.be/fhir/StructureDefinition/concerned-child"
* component[childConsent][0].extension[0].valueReference.reference = "RelatedPerson/ChildEmma"
* component[childSay][0].valueString = "Emma wil dat mama hulp krijgt en wil zelf met de CLB-medewerker praten."
* component[childSay][0].extension[0].url = "https://kindreflex-ed.be/fhir/StructureDefinition/concerned-child"
* component[childSay][0].extension[0].valueReference.reference = "RelatedPerson/ChildEmma"
* component[keyPerson][0].valueCodeableConcept = KeyPersonRoleCS#partner "Partner"
* component[keyPerson][1].valueCodeableConcept = KeyPersonRoleCS#other "Andere sleutelfiguur"
* component[keyPerson][1].valueCodeableConcept.text = "Buurvrouw die de kinderen na school opvangt"
* component[patientExplanation].valueString = "Ze zegt dat haar partner het niet meent en dat het vanzelf beter wordt."
* component[teamMember][0].valueString = "Sociaal werker spoedgeneeskunde"
* component[teamMember][1].valueString = "Dr. Janssens, kinderarts"

Instance: Step5Example
InstanceOf: KindreflexStep5Finding
Title: "Example: step 5, safety not restored"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a17, Patient/kr-mother-001, Encounter/kr-enc-3, 2026-05-18T11:30:00+02:00, Practitioner/kr-social-1)
* insert Step5Content(RelatedPerson/ChildNoah, RelatedPerson/ChildEmma)
* component[agreedAction][0].valueString = "Mama neemt contact op met het CAW voor een gesprek"
* component[agreedAction][0].extension[0].url = "https://kindreflex-ed.be/fhir/StructureDefinition/follow-up-date"
* component[agreedAction][0].extension[0].valueDate = "2026-05-25"
* component[nextFollowUp].valueDateTime = "2026-06-01"

Instance: Step6Example
InstanceOf: KindreflexStep6Finding
Title: "Example: step 6, the VK is involved"
Usage: #example
* insert FindingCommon(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a18, Patient/kr-mother-001, Encounter/kr-enc-3, 2026-05-18T13:00:00+02:00, Practitioner/kr-social-1)
* insert Step6Content(RelatedPerson/ChildNoah, RelatedPerson/ChildEmma, ServiceRequest/ReferralExample)
* component[contactDate].valueDateTime = "2026-05-18"
* component[contactPerson].valueString = "Consulent van dienst, VK Oost-Vlaanderen"
* component[contactChannel].valueCodeableConcept = ContactChannelCS#phone "Telefonisch"

Instance: VkOostVlaanderen
InstanceOf: KindreflexPartnerOrganization
Title: "Example: VK Oost-Vlaanderen (partner directory, seed 002)"
Usage: #example
* insert VkContent

Instance: ReferralExample
InstanceOf: KindreflexReferral
Title: "Example: referral to the VK"
Usage: #example
* insert ReferralContent(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a19, Patient/kr-mother-001, Encounter/kr-enc-3, Practitioner/kr-social-1, Organization/VkOostVlaanderen, Observation/Step5Example, RelatedPerson/ChildNoah, RelatedPerson/ChildEmma)

Instance: ReferralExpectedChild
InstanceOf: KindreflexReferral
Title: "Example: referral to the VK about an expected child (the patient cares for no child)"
Usage: #example
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/referral"
* identifier[kindreflex].value = "0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a23"
* extension[patientInformed].valueBoolean = true
* status = #active
* intent = #order
* code = RecordTypeCS#referral
* subject.reference = "Patient/kr-father-002"
* encounter.reference = "Encounter/kr-enc-9"
* authoredOn = "2026-11-24T15:30:00+01:00"
* priority = #routine
* requester.reference = "Practitioner/kr-social-1"
* performerType = PartnerTypeCS#vk "Vertrouwenscentrum Kindermishandeling (VK)"
* performer[0].reference = "Organization/VkOostVlaanderen"
* reasonReference[0].reference = "Observation/kr-step4-father-002"
* supportingInfo[0].reference = "Observation/ExpectingChildPartner"

Instance: ReferralPoliceAcuteDanger
InstanceOf: KindreflexReferral
Title: "Example: referral to the police with acute danger (priority stat)"
Usage: #example
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/referral"
* identifier[kindreflex].value = "0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a24"
* extension[patientInformed].valueBoolean = false
* status = #active
* intent = #order
* code = RecordTypeCS#referral
* subject.reference = "Patient/kr-mother-001"
* encounter.reference = "Encounter/kr-enc-3"
* authoredOn = "2026-05-18T23:40:00+02:00"
* priority = #stat
* requester.reference = "Practitioner/kr-social-1"
* performerType = PartnerTypeCS#police "Politie"
* performer[0].reference = "Organization/kr-police-zone"
* reasonReference[0].reference = "Observation/kr-step4-acute-danger"
* supportingInfo[0].reference = "RelatedPerson/ChildNoah"
* note[0].text = "De partner is agressief aanwezig; de patiënte wordt geïnformeerd zodra de kinderen veilig zijn."

Instance: OpenConcernExample
InstanceOf: KindreflexOpenConcern
Title: "Example: open concern after step 6"
Usage: #example
* insert ConcernContent(0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a20, Patient/kr-mother-001, Practitioner/kr-social-1)

Instance: ClosedConcernExample
InstanceOf: KindreflexOpenConcern
Title: "Example: a closed concern (inactive, with an end and the reason)"
Usage: #example
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/concern"
* identifier[kindreflex].value = "0b7e1c52-1f6a-4d3e-9a41-0c5d2b8e7a21"
* extension[lastStep].valueCoding = KindreflexStepCS#step-3
* extension[trigger][0].valueCoding = HagueTriggerCS#substance-abuse
* status = #inactive
* category[safety] = $flag-category#safety
* code = RecordTypeCS#open-concern
* subject.reference = "Patient/kr-adult-005"
* period.start = "2026-06-01T02:10:00+02:00"
* period.end = "2026-07-15T10:00:00+02:00"
* author.reference = "Practitioner/kr-social-1"
* extension[closeReason].valueCodeableConcept = CaseCloseReasonCS#safety-restored "Veiligheid hersteld"
* extension[closeReason].valueCodeableConcept.text = "Steun via het CAW loopt; geen nieuwe zorgen."

Instance: ProvenanceExample
InstanceOf: KindreflexProvenance
Title: "Example: authorship of the step 6 writes"
Usage: #example
* target[0].reference = "Observation/Step6Example"
* target[1].reference = "ServiceRequest/ReferralExample"
* target[2].reference = "Flag/OpenConcernExample"
* insert ProvenanceAuthor(Practitioner/kr-social-1, 2026-05-18T13:01:00+02:00, UPDATE)
