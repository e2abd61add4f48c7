// Content of the seed 001 worked case (training workshop, three episodes), as RuleSets
// shared by the standalone examples (relative references) and the transaction Bundle
// (urn:uuid references). Names and dates are invented; the story is the workshop's.
//
// Episode 1 (triage, 12 January 2026): a single mother is exhausted, cannot organise the
//   day, has depressive thoughts and money troubles; a boy of 3 (not yet toilet-trained)
//   and a girl of 8 (school problems). She talks openly: step 2 no concern, step 3 support.
// Episode 2 (9 March 2026): a new partner irritated by the children; no lunch packed for
//   school, the children often absent (CLB consulted) and often left home alone; the
//   mother torn between her children and her partner. Step 2 niet-pluis, step 4:
//   concerning, the mother is willing (step 5).
// Episode 3 (18 May 2026): bruises on the mother; no steps towards help for the children;
//   school and CLB remain worried; she stops the counselling. Step 5: safety not
//   restored; step 6: the VK, without her cooperation, after telling her.
// The same reading of the workshop as tests/unit/test_seed001_scenario.py (the protocol).

RuleSet: FindingCommon(id, patient, encounter, time, performer)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/finding"
* identifier[kindreflex].value = "{id}"
* status = #final
* category[socialHistory] = $obs-category#social-history
* subject.reference = "{patient}"
* encounter.reference = "{encounter}"
* effectiveDateTime = "{time}"
* performer[0].reference = "{performer}"

RuleSet: ChildNoahContent(id, patient)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/child"
* identifier[kindreflex].value = "{id}"
* extension[livesWith].valueCoding = LivesWithCS#permanently "Woont permanent bij de cliënt"
* patient.reference = "{patient}"
* relationship = $v3-RoleCode#NCHILD "natural child"
* name[0].given[0] = "Noah"
* name[0].family = "Peeters"
* gender = #male
* birthDate = "2022-10-03"

RuleSet: ChildEmmaContent(id, patient)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/child"
* identifier[kindreflex].value = "{id}"
* extension[livesWith].valueCoding = LivesWithCS#permanently "Woont permanent bij de cliënt"
* patient.reference = "{patient}"
* relationship = $v3-RoleCode#NCHILD "natural child"
* name[0].given[0] = "Emma"
* name[0].family = "Peeters"
* gender = #female
* birthDate = "2017-09-12"

RuleSet: Step1Content(noah, emma)
* code = KindreflexStepCS#step-1
* valueBoolean = true
* focus[0].reference = "{noah}"
* focus[1].reference = "{emma}"
* component[planVersion].valueString = "kindreflex-generic-2021"

RuleSet: Step2NoConcernContent
* code = KindreflexStepCS#step-2
* valueCodeableConcept = SafetyAssessmentCS#no-concern "Geen twijfels over de thuissituatie"
* component[whoHelps].valueString = "Nog niemand; ze redt het alleen"
* component[consultation][0].valueCodeableConcept = ConsultationTypeCS#colleague "Overleg met een collega"
* component[urgency].valueBoolean = false
* component[planVersion].valueString = "kindreflex-generic-2021"
* note[0].text = "Uitgeput, slaagt er niet in de dag te organiseren, depressieve gedachten, financieel moeilijk. Jongen nog niet zindelijk, meisje heeft schoolproblemen. Praat open."

RuleSet: Step3Content(noah, emma)
* code = KindreflexStepCS#step-3
* focus[0].reference = "{noah}"
* focus[1].reference = "{emma}"
* component[supportAction][0].valueCodeableConcept = SupportActionCS#ask-regularly
* component[supportAction][1].valueCodeableConcept = SupportActionCS#discuss-impact
* component[supportAction][2].valueCodeableConcept = SupportActionCS#involve-network
* component[supportAction][3].valueCodeableConcept = SupportActionCS#involve-service
* component[supportAction][4].valueCodeableConcept = SupportActionCS#strengthen-resilience
* component[service][0].valueCodeableConcept = PartnerTypeCS#caw
* component[service][1].valueCodeableConcept = PartnerTypeCS#ocmw
* component[service][2].valueCodeableConcept = PartnerTypeCS#opvoedingslijn
* component[planVersion].valueString = "kindreflex-generic-2021"
* note[0].text = "Praktische en financiële steun; Opvoedingslijn voor de zindelijkheid."

RuleSet: Step2Content(noah, emma)
* code = KindreflexStepCS#step-2
* valueCodeableConcept = SafetyAssessmentCS#niet-pluis "Niet-pluisgevoel"
* focus[0].reference = "{noah}"
* focus[1].reference = "{emma}"
* component[reason][0].valueString = "Nieuwe partner ergert zich aan de kinderen"
* component[reason][1].valueString = "Geen boterhammen mee naar school; de kinderen zijn vaak afwezig"
* component[reason][2].valueString = "De kinderen blijven dikwijls alleen thuis"
* component[reason][3].valueString = "Moeder zit tussen twee vuren"
* component[consultation][0].valueCodeableConcept = ConsultationTypeCS#colleague "Overleg met een collega"
* component[urgency].valueBoolean = false
* component[planVersion].valueString = "kindreflex-generic-2021"

RuleSet: Step4Content(noah, emma)
* code = KindreflexStepCS#step-4
* valueCodeableConcept = TeamDecisionCS#concerning-willing "Verontrustend, maar de cliënt is bereid mee te werken"
* focus[0].reference = "{noah}"
* focus[1].reference = "{emma}"
* insert FactorComponent(0, parental-mental-illness, risk, Depressieve gedachten)
* insert FactorComponent(1, high-stress, risk, Slaagt er niet in de dag te organiseren)
* insert FactorComponent(2, financial-problems, risk, Financieel moeilijk)
* insert FactorComponent(3, partner-hostile-to-children, risk, Nieuwe partner ergert zich aan de kinderen)
* insert FactorComponent(4, basic-needs-unmet, risk, Geen boterhammen mee naar school)
* insert FactorComponent(5, school-absence, risk, Kinderen vaak afwezig op school)
* insert FactorComponent(6, children-left-alone, risk, Kinderen blijven dikwijls alleen thuis)
* insert FactorComponent(7, child-development-concerns, risk, Jongen van 3 niet zindelijk; meisje schoolproblemen)
* insert FactorComponent(8, asks-for-help, protective, Moeder praat open over haar moeilijkheden)
* insert FactorComponent(9, professional-involvement, protective, School en CLB zijn betrokken)
* insert FactorComponent(10, supportive-network, protective, Niet meer alleen sinds de nieuwe partner)
* component[consultation][0].valueCodeableConcept = ConsultationTypeCS#colleague "Overleg met een collega"
* component[consultation][1].valueCodeableConcept = ConsultationTypeCS#clb "Overleg met het CLB"
* component[discussedWithPatient].valueBoolean = true
* component[planVersion].valueString = "kindreflex-generic-2021"
* note[0].text = "Zorgen concreet benoemd; moeder wil mee aan de situatie werken."

RuleSet: FactorComponent(i, code, kind, text)
* component[factor][{i}].valueCodeableConcept = FactorCS#{code}
* component[factor][{i}].valueCodeableConcept.text = "{text}"
* component[factor][{i}].extension[0].url = "https://kindreflex-ed.be/fhir/StructureDefinition/factor-kind"
* component[factor][{i}].extension[0].valueCoding = FactorKindCS#{kind}

RuleSet: Step5Content(noah, emma)
* code = KindreflexStepCS#step-5
* valueCodeableConcept = SafetyProgressCS#not-restored "De veiligheid is niet hersteld"
* focus[0].reference = "{noah}"
* focus[1].reference = "{emma}"
* component[safetyAction][0].valueCodeableConcept = SafetyActionCS#help-for-children
* component[safetyAction][1].valueCodeableConcept = SafetyActionCS#revisit-parenthood
* component[safetyAction][2].valueCodeableConcept = SafetyActionCS#work-with-family
* component[service][0].valueCodeableConcept = PartnerTypeCS#clb
* component[planVersion].valueString = "kindreflex-generic-2021"
* note[0].text = "Blauwe plekken bij de cliënte. Geen stappen gezet naar hulp voor de kinderen; school en CLB blijven ongerust. Cliënte zet de begeleiding stop."

RuleSet: Step6Content(noah, emma, referral)
* code = KindreflexStepCS#step-6
* basedOn[0].reference = "{referral}"
* valueCodeableConcept = PartnerTypeCS#vk "Vertrouwenscentrum Kindermishandeling (VK)"
* focus[0].reference = "{noah}"
* focus[1].reference = "{emma}"
* component[withCooperation].valueBoolean = false
* component[patientInformed].valueBoolean = true
* component[followUp][0].valueString = "Het CLB laten weten wie de volgende stap zet"
* component[planVersion].valueString = "kindreflex-generic-2021"

RuleSet: ReferralContent(id, patient, encounter, requester, vk, reason, noah, emma)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/referral"
* identifier[kindreflex].value = "{id}"
* extension[patientInformed].valueBoolean = true
* status = #active
* intent = #order
* code = RecordTypeCS#referral
* subject.reference = "{patient}"
* encounter.reference = "{encounter}"
* authoredOn = "2026-05-18T13:00:00+02:00"
* priority = #routine
* requester.reference = "{requester}"
* performerType = PartnerTypeCS#vk "Vertrouwenscentrum Kindermishandeling (VK)"
* performer[0].reference = "{vk}"
* reasonReference[0].reference = "{reason}"
* supportingInfo[0].reference = "{noah}"
* supportingInfo[1].reference = "{emma}"

RuleSet: ConcernContent(id, patient, author)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/concern"
* identifier[kindreflex].value = "{id}"
* extension[lastStep].valueCoding = KindreflexStepCS#step-6
* status = #active
* category[safety] = $flag-category#safety
* code = RecordTypeCS#open-concern
* subject.reference = "{patient}"
* period.start = "2026-03-09T14:00:00+01:00"
* author.reference = "{author}"

RuleSet: VkContent
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/partner"
* identifier[kindreflex].value = "vk-oost-vlaanderen"
* active = true
* type = PartnerTypeCS#vk "Vertrouwenscentrum Kindermishandeling (VK)"
* name = "Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen"
* telecom[0].system = #phone
* telecom[0].value = "09 216 73 30"

RuleSet: ProvenanceAuthor(author, time, activity)
* recorded = "{time}"
* activity = $v3-DataOperation#{activity}
* agent[0].type = $provenance-participant-type#author
* agent[0].who.reference = "{author}"
