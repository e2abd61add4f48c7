// Profiles of the Kindreflex guide (FHIR R4 4.0.1)

Profile: KindreflexChild
Parent: RelatedPerson
Id: kindreflex-child
Title: "Kindreflex child of the patient"
Description: "A child the adult patient cares for, fully, partly or occasionally (step 1). The patient is the adult; the relationship says how the child relates to the patient."
* insert Published
* insert BusinessIdentifier(child)
* identifier contains ssin 0..1
* identifier[ssin] ^short = "Belgian national number (INSZ/NISS) of the child, when an EHR records it (the service does not ask for it)"
* identifier[ssin].system 1..1
* identifier[ssin].system = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin" (exactly)
* identifier[ssin].value 1..1
* extension contains LivesWithExt named livesWith 1..1 MS
* extension[livesWith] ^short = "Lives with the patient: permanently, part-time or not"
* extension[livesWith].value[x] MS
* patient MS
* patient ^short = "The adult patient"
* relationship 1..* MS
* relationship from ChildRelationshipVS (extensible)
* relationship ^short = "How the child relates to the patient (CHILD, NCHILD, STPCHLD, CHLDFOST, CHLDADOPT, GRNDCHILD, NIENEPH); other roles of the same person may stand beside it"
* relationship ^comment = "At least one relationship is a child relationship of ChildRelationshipVS (kr-child-1). The EHR may record the person's other roles beside it (a healthcare power of attorney, an emergency contact): the service keeps them when it updates the child, so the binding is extensible, not required."
* obeys kr-child-1
* name 1..* MS
* name ^short = "The child's name"
* birthDate 1..1 MS
* birthDate ^short = "The child's date of birth"
* obeys kr-child-2

Profile: KindreflexExpectingChild
Parent: Observation
Id: kindreflex-expecting-child
Title: "Kindreflex expecting a child"
Description: "The patient expects a child: the patient's own pregnancy or the partner's (step 1), with the expected date when known."
* insert Published
* insert LoincCopyright
* insert BusinessIdentifier(finding)
* status MS
* insert CategorySlice(socialHistory, $obs-category#social-history)
* code MS
* code = RecordTypeCS#expecting-child
* subject 1..1 MS
* subject only Reference(Patient)
* encounter MS
* effective[x] 1..1 MS
* effective[x] only dateTime
* obeys kr-moment-1
* performer 1..* MS
* performer only Reference(Practitioner or PractitionerRole)
* value[x] 1..1 MS
* value[x] only CodeableConcept
* value[x] from PregnancyOfVS (required)
* value[x] ^short = "Who is pregnant: the patient or the partner"
* insert ComponentSlicing
* component contains expectedDeliveryDate 0..1 MS
* component[expectedDeliveryDate] ^short = "Expected date of delivery, when known"
* component[expectedDeliveryDate].code = FindingComponentCS#expected-delivery-date
* component[expectedDeliveryDate].code ^comment = "Coded with the guide's finding-component#expected-delivery-date (what the slice is found by) and, beside it, LOINC 11778-8 Delivery date Estimated, the code other systems know (HL7 Belgium's pregnancy status, the IPS). Written before 2026-12-04 with the guide's code only: a reader accepts either coding, or both."
* component[expectedDeliveryDate].code.coding ^slicing.discriminator.type = #pattern
* component[expectedDeliveryDate].code.coding ^slicing.discriminator.path = "$this"
* component[expectedDeliveryDate].code.coding ^slicing.rules = #open
* component[expectedDeliveryDate].code.coding contains loinc 0..1 MS
* component[expectedDeliveryDate].code.coding[loinc] = $loinc#11778-8 "Delivery date Estimated"
* component[expectedDeliveryDate].code.coding[loinc] ^short = "LOINC 11778-8 Delivery date Estimated, written beside the guide's code"
* component[expectedDeliveryDate].value[x] 1..1
* component[expectedDeliveryDate].value[x] only dateTime
* obeys kr-day-1

Profile: KindreflexStepFinding
Parent: Observation
Id: kindreflex-step-finding
Title: "Kindreflex step finding (base)"
Description: "What every Kindreflex step finding records: the step, the patient, the encounter, the children concerned (focus; none = all children), the author and the time. Abstract: a finding conforms to one of the six step profiles."
* insert Published
* ^abstract = true
* insert BusinessIdentifier(finding)
* status MS
* insert CategorySlice(socialHistory, $obs-category#social-history)
* code MS
* code from KindreflexStepVS (required)
* code ^short = "The Kindreflex step"
* subject 1..1 MS
* subject only Reference(Patient)
* subject ^short = "The adult patient"
* encounter MS
* encounter ^short = "The encounter in which the finding was recorded"
* focus MS
* focus only Reference(KindreflexChild)
* focus ^short = "The children concerned (none: all children of the patient)"
* effective[x] 1..1 MS
* effective[x] only dateTime
* effective[x] ^short = "When the finding was recorded (with time zone)"
* obeys kr-moment-1 and kr-day-1
* performer 1..* MS
* performer only Reference(Practitioner or PractitionerRole)
* performer ^short = "The user who recorded the finding (fhirUser)"
* note MS

Profile: KindreflexStep1Finding
Parent: KindreflexStepFinding
Id: kindreflex-step1-finding
Title: "Kindreflex step 1: talk about the children and parenthood"
Description: "Step 1: whether the patient cares for children (fully, partly or occasionally) or expects a child. The children themselves are RelatedPerson resources (kindreflex-child) named in focus; a pregnancy is a kindreflex-expecting-child Observation, recorded with this step 1 and named in hasMember."
* insert Published
* ^abstract = false
* code = KindreflexStepCS#step-1
* value[x] 1..1 MS
* value[x] only boolean
* value[x] ^short = "true: the patient cares for or expects children; false: no children (the Kindreflex ends)"
* hasMember 0..1 MS
* hasMember only Reference(KindreflexExpectingChild)
* hasMember ^short = "The expected child: the kindreflex-expecting-child Observation recorded with this step 1"
* hasMember ^comment = "hasMember, not derivedFrom: in R4 hasMember makes this Observation the group of which the target is a part, and the pregnancy is part of the step 1 answer (the nurse records both at once, as the children in focus are); derivedFrom is for a value computed from a measurement (an anion gap from its electrolytes). Without this link nothing on the server says which step 1 a pregnancy answers, and a step 1 read back without it says 'no children, nothing expected' (the Kindreflex would end). Written in the same transaction: the reference is the urn:uuid of the expecting-child entry, which the server resolves."
* insert ComponentSlicing
* insert PlanVersionComponent
* obeys kr-s1-1 and kr-s1-2

Profile: KindreflexStep2Finding
Parent: KindreflexStepFinding
Id: kindreflex-step2-finding
Title: "Kindreflex step 2: gauge safety at home"
Description: "Step 2: the safety assessment (no concern, niet-pluis, unclear) with its reasons, who helps on a bad day, consultations, acute danger and the Hague trigger that prompted the check."
* insert Published
* ^abstract = false
* code = KindreflexStepCS#step-2
* value[x] 1..1 MS
* value[x] only CodeableConcept
* value[x] from SafetyAssessmentVS (required)
* value[x] ^short = "no-concern | niet-pluis | unclear"
* insert ComponentSlicing
* insert StringComponent(reason, reason, 0..*, A reason for the niet-pluis feeling or the unclear situation)
* insert StringComponent(whoHelps, who-helps, 0..1, Who or what helps on a bad day)
* insert ConsultationComponent
* insert BooleanComponent(urgency, urgency, 0..1, The situation at home is acutely unsafe)
* insert CodedComponent(trigger, trigger, 0..*, HagueTriggerVS, required, Hague trigger group that prompted the check)
* insert PlanVersionComponent
* obeys kr-s2-1 and kr-s2-2

Profile: KindreflexStep3Finding
Parent: KindreflexStepFinding
Id: kindreflex-step3-finding
Title: "Kindreflex step 3: support the patient as a parent"
Description: "Step 3: how the patient was supported as a parent (support actions and/or a note) and the supporting services involved."
* insert Published
* ^abstract = false
* code = KindreflexStepCS#step-3
* value[x] 0..0
* insert ComponentSlicing
* insert CodedComponent(supportAction, support-action, 0..*, SupportActionVS, required, How the patient was supported)
* insert CodedComponent(service, service, 0..*, SupportServiceVS, required, A supporting service involved (not VK/OCJ/parket/police\))
* insert PlanVersionComponent
* obeys kr-s3-1

Profile: KindreflexStep4Finding
Parent: KindreflexStepFinding
Id: kindreflex-step4-finding
Title: "Kindreflex step 4: concern and willingness"
Description: "Step 4: the team decision on concern and willingness, the risk and protective factors weighed, consultations, whether the worries were discussed with the patient, and the children heard (with their consent)."
* insert Published
* ^abstract = false
* code = KindreflexStepCS#step-4
* value[x] 1..1 MS
* value[x] only CodeableConcept
* value[x] from TeamDecisionVS (required)
* value[x] ^short = "safe | concerning-willing | concerning-unwilling | acute-danger"
* insert ComponentSlicing
* insert CodedComponent(factor, factor, 0..*, FactorVS, extensible, A risk or protective factor (text: the specifics of this family\))
* obeys kr-s4-4
* insert ConsultationComponent
* insert BooleanComponent(discussedWithPatient, discussed-with-patient, 0..1, The worries were named concretely to the patient)
* insert BooleanComponent(childConsent, child-consent, 0..*, A child heard as a key person consented)
* obeys kr-s4-5
* insert StringComponent(childSay, child-say, 0..*, What a child heard said or wants (the child in extension concerned-child\))
* insert CodedComponent(keyPerson, key-person, 0..*, KeyPersonRoleVS, required, An adult key person heard (text: who\))
* insert StringComponent(patientExplanation, patient-explanation, 0..1, The patient's explanation of the worries named)
* insert StringComponent(teamMember, team-member, 0..*, Who took part in the team decision (name or role\))
* insert PlanVersionComponent
* obeys kr-s4-1 and kr-s4-2 and kr-s4-3 and kr-s4-6 and kr-s4-7 and kr-s4-8

Profile: KindreflexStep5Finding
Parent: KindreflexStepFinding
Id: kindreflex-step5-finding
Title: "Kindreflex step 5: restore safety"
Description: "Step 5: the progress (improving or not restored), the safety actions taken, the supporting services and consultations."
* insert Published
* ^abstract = false
* code = KindreflexStepCS#step-5
* value[x] 1..1 MS
* value[x] only CodeableConcept
* value[x] from SafetyProgressVS (required)
* value[x] ^short = "improving | not-restored"
* insert ComponentSlicing
* insert CodedComponent(safetyAction, safety-action, 0..*, SafetyActionVS, required, An action taken to restore safety)
* insert CodedComponent(service, service, 0..*, SupportServiceVS, required, A supporting service involved (not VK/OCJ/parket/police\))
* insert ConsultationComponent
* insert StringComponent(agreedAction, agreed-action, 0..*, An action agreed with the patient or the family or a service)
* insert DateComponent(nextFollowUp, next-follow-up, 0..1, The date of the next follow-up (keeps step 5 open\))
* insert PlanVersionComponent
* obeys kr-s5-1 and kr-s5-2 and kr-day-2

Profile: KindreflexStep6Finding
Parent: KindreflexStepFinding
Id: kindreflex-step6-finding
Title: "Kindreflex step 6: involve a mandated facility"
Description: "Step 6: which facility was involved (VK, OCJ, or with acute danger the parket or police), with or without the patient's cooperation, whether the patient was informed first (if not: why), and the follow-up actions agreed. The referral itself is a kindreflex-referral ServiceRequest (basedOn)."
* insert Published
* ^abstract = false
* code = KindreflexStepCS#step-6
* basedOn MS
* basedOn only Reference(KindreflexReferral)
* basedOn ^short = "The referral (ServiceRequest) this step made"
* value[x] 1..1 MS
* value[x] only CodeableConcept
* value[x] from MandatedTargetVS (required)
* value[x] ^short = "vk | ocj | parket | police"
* insert ComponentSlicing
* insert BooleanComponent(withCooperation, with-cooperation, 1..1, With the patient's cooperation)
* insert BooleanComponent(patientInformed, patient-informed, 1..1, The patient was informed and prepared before the referral)
* insert StringComponent(notInformedReason, not-informed-reason, 0..1, Why the patient could not be informed first (acute danger only\))
* insert StringComponent(followUp, follow-up, 0..*, A follow-up action agreed with the facility)
* insert DateComponent(contactDate, contact-date, 0..1, When the facility was contacted)
* insert StringComponent(contactPerson, contact-person, 0..1, The person contacted at the facility)
* insert CodedComponent(contactChannel, contact-channel, 0..1, ContactChannelVS, required, How the facility was contacted)
* insert PlanVersionComponent
* obeys kr-s6-1 and kr-s6-2 and kr-s6-3

Profile: KindreflexPartnerOrganization
Parent: Organization
Id: kindreflex-partner-organization
Title: "Kindreflex partner organisation"
Description: "An organisation of the regional Kindreflex partner directory (VK, OCJ, parket, police, Kind en Gezin, CLB, ...). Identifiers follow HL7 Belgium (KBO/BCE enterprise number, NIHDI number). A step 6 referral writes it as the hospital's directory says it at the referral: created when the server holds none with its partner identifier, else the directory's entry laid over the one it holds (a changed name or phone number), what the EHR added kept, where the EHR grants the app the update of Organizations."
* insert Published
* identifier MS
* identifier ^slicing.discriminator.type = #value
* identifier ^slicing.discriminator.path = "system"
* identifier ^slicing.rules = #open
* identifier contains kindreflex 0..1 MS and cbe 0..1 MS and nihdi 0..1
* identifier[kindreflex].system 1..1
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/partner" (exactly)
* identifier[kindreflex].value 1..1
* identifier[kindreflex] ^short = "Key of the partner in the Kindreflex directory"
* identifier[cbe].system 1..1
* identifier[cbe].system = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/cbe" (exactly)
* identifier[cbe].value 1..1
* identifier[cbe] ^short = "KBO/BCE enterprise number"
* identifier[nihdi].system 1..1
* identifier[nihdi].system = "https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/nihdi-organization" (exactly)
* identifier[nihdi].value 1..1
* identifier[nihdi] ^short = "NIHDI (RIZIV/INAMI) organisation number, when another writer records it (the partner directory has none)"
* type 1..* MS
* type from PartnerTypeVS (extensible)
* type ^short = "Kind of partner (vk, ocj, parket, police, kind-en-gezin, clb, ...)"
* name 1..1 MS
* telecom MS

Profile: KindreflexReferral
Parent: ServiceRequest
Id: kindreflex-referral
Title: "Kindreflex referral (step 6)"
Description: "The step 6 referral to a mandated facility (VK, OCJ) or, with acute danger, to the parket or police: performer is the Organization from the partner directory, reasonReference the finding that led to step 6 (usually the step 4 decision), supportingInfo who the referral is about: the children it names or, naming none, the minor children and the expected child (the Kindreflex concerns minors, from pregnancy on). priority is always written: stat when the referral follows from acute danger (the case's acute-danger route: a step 2 acute danger or the step 4 decision acute-danger; always so for the parket and the police), else routine. stat, not urgent: R4 request-priority defines urgent as 'actioned promptly' and stat as 'actioned immediately - highest possible priority, e.g. an emergency', and a child's integrity in acute danger is that emergency. A referral written before priority was required has none: it is read as routine (R4's meaningWhenMissing), one to the parket or the police as stat, and its next status update writes that priority."
* insert Published
* insert BusinessIdentifier(referral)
* extension contains PatientInformedExt named patientInformed 1..1 MS
* extension[patientInformed].value[x] MS
* status MS
* intent = #order
* code 1..1 MS
* code = RecordTypeCS#referral
* subject MS
* subject only Reference(Patient)
* encounter MS
* authoredOn 1..1 MS
* priority 1..1 MS
* priority from KindreflexReferralPriorityVS (required)
* priority ^short = "stat when the referral follows from acute danger, else routine (always written)"
* priority ^comment = "stat when the case's route into step 6 comes from acute danger (a step 2 finding with acute danger, or the step 4 team decision acute-danger): the only route to the parket or the police, and also a VK or OCJ referral made then. Otherwise routine, written rather than left to R4's meaningWhenMissing (normal priority), so that a reader never has to guess. Why stat and not urgent or asap: FHIR R4 request-priority defines urgent as 'actioned promptly', asap as 'as soon as possible', and stat as 'actioned immediately - highest possible priority, e.g. an emergency'; a child's integrity in acute danger is that emergency. A referral written before this element was required has none: read it as routine (R4's meaning), except one to the parket or the police, which the protocol allows only with acute danger (stat); its next status update writes that priority."
* requester 1..1 MS
* requester only Reference(Practitioner or PractitionerRole)
* performerType 1..1 MS
* performerType from MandatedTargetVS (required)
* performerType ^short = "vk | ocj | parket | police"
* performer 1..1 MS
* performer only Reference(KindreflexPartnerOrganization)
* reasonReference 1..* MS
* reasonReference only Reference(KindreflexStep4Finding or KindreflexStep5Finding or KindreflexStep2Finding)
* reasonReference ^short = "The finding that led to step 6 (step 4 decision; or step 5 not restored; or step 2 acute danger)"
* supportingInfo 1..* MS
* supportingInfo only Reference(KindreflexChild or KindreflexExpectingChild)
* supportingInfo ^short = "The children concerned and/or the expected child"
* supportingInfo ^comment = "The kindreflex-child RelatedPersons of the children concerned and, for a pregnancy, the kindreflex-expecting-child Observation the case's step 1 names in hasMember (an unborn child has no RelatedPerson). A referral that names no child is about the patient's minor children and the expected child, not a grown-up child; only when no minor and no expected child is left (the children came of age during the case) is it about all of them."
* status from KindreflexReferralStatusVS (required)
* status ^short = "active | on-hold | completed | revoked: kept up to date as the referral proceeds"
* note MS
* note ^short = "Why the patient was not informed first; the social worker's notes, one per status change (time, author)"
* obeys kr-ref-1 and kr-ref-2 and kr-ref-3

Profile: KindreflexOpenConcern
Parent: Flag
Id: kindreflex-open-concern
Title: "Kindreflex open concern"
Description: "An open Kindreflex concern about the children of the patient: what makes the CDS card warn at the next presentation and what fills the social service's worklist. status active while steps 4-6 lie ahead; inactive (with period.end and the close reason) when closed. It has no encounter: it is relevant beyond the visit that raised it."
* insert Published
* insert BusinessIdentifier(concern)
* extension contains ConcernLastStepExt named lastStep 0..1 MS and ConcernTriggerExt named trigger 0..* MS and ConcernCloseReasonExt named closeReason 0..1 MS
* extension[lastStep].value[x] MS
* extension[trigger].value[x] MS
* extension[closeReason].value[x] MS
* extension[closeReason] ^short = "Why the case was closed (inactive Flag)"
* status MS
* insert CategorySlice(safety, $flag-category#safety)
* code MS
* code = RecordTypeCS#open-concern
* subject MS
* subject only Reference(Patient)
* period 1..1 MS
* period.start 1..1 MS
* encounter 0..0
* encounter ^comment = "Not used: R4 Flag.encounter makes the alert only relevant during that encounter, and the concern must warn at every later presentation until it is closed. The ED visit that raised it is the encounter of its step findings."
* author 1..1 MS
* author only Reference(Practitioner or PractitionerRole or Organization or Device)
* obeys kr-flag-1 and kr-flag-2 and kr-flag-3

Profile: KindreflexProvenance
Parent: Provenance
Id: kindreflex-provenance
Title: "Kindreflex provenance"
Description: "Who wrote the Kindreflex resources of one save: target = the resources that save wrote, agent author = the user who saved (Practitioner via fhirUser), recorded = when; activity UPDATE when one of them was updated, else CREATE. One Provenance per save: a nurse's triage save and a social worker's step save are separate saves with separate Provenances, each naming its own author. A recorded child the nurse only confirmed is referenced by the step 1 finding and is not a target: nothing of it was written. Nor is the partner Organization a step 6 referral names as performer, though the same transaction creates it when the server holds none with its partner identifier, or lays the directory's entry over the one it holds: it is the hospital's partner directory entry as the service publishes it, not something the author recorded (the referral that names it is a target; the service's local audit names the Organization among what the save wrote, the save's AuditEvent, like the Provenance, only what the author recorded). Provenance has no identifier in R4: the service writes it as a plain create (POST, id assigned by the server) in the same transaction as its targets, and sends a transaction once (before a retry it searches for a resource only that transaction creates), so it is not written twice."
* insert Published
* target 1..* MS
* target ^comment = "Version-independent references (RelatedPerson/123, not RelatedPerson/123/_history/2), by choice. R4 says target references are usually version specific; but the targets are written in the same transaction as the Provenance, the created ones under a urn:uuid that the server turns into the new id alone, and a version id is the server's opaque string, so the version an update will get cannot be named before the server assigns it. The version a Provenance speaks for is the one written by the same transaction. The service also finds its own Provenances by target (Provenance?target=Flag/123&recorded=…, to tell whether a transaction it sent arrived), which a version in the reference would make depend on how each server matches versioned references."
* recorded MS
* occurred[x] only dateTime
* activity MS
* activity from ProvenanceActivityVS (required)
* agent 1..* MS
* agent.type 1..1 MS
* agent.type ^short = "author (ValueSet provenance-author-role) for the user who recorded"
// The service writes one agent, the user who saved, with type provenance-participant-type
// author (service/fhir/mapping.py provenance(), from this ValueSet); agent.role it leaves
// empty, so the ValueSet codes agent.type. Extensible, not required: kr-prov-1 already
// demands an author agent, and the profile lets a Provenance name other participants
// (agent 1..*), such as an enterer or a device, whose type is not author; required would
// make each of them invalid. Extensible narrows R4's own extensible provenance-agent-type
// (which holds author) to the one code an agent in the author's role uses.
* agent.type from ProvenanceAuthorRoleVS (extensible)
* agent.type ^binding.description = "The author: the user who recorded the data (provenance-participant-type author); another participant a type of its own."
* agent.who MS
* agent.who only Reference(Practitioner or PractitionerRole or Organization or Device)
* agent.who ^short = "The author: the user (fhirUser) who recorded the data"
* obeys kr-prov-1
