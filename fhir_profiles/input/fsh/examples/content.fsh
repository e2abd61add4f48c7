// Content of the seed 001 worked case (training workshop, three episodes), as RuleSets
// shared by the standalone examples (relative references) and the transaction Bundle
// (urn:uuid references). Names and dates are invented; the story is the workshop's.
//
// Episode 1 (triage, 2 March 2026): a single mother is up; she does not manage to
//   organise the day, has depressive thoughts, money is tight. Two children: a boy of 3
//   (not yet toilet-trained) and a girl of 8 (school problems). Steps 1 and 2: niet-pluis.
// Episode 2 (social service, 11 May 2026): a new partner; no lunch taken to school, the
//   children are often absent (CLB consulted); the mother is caught between two fires;
//   the partner is irritated by the children, who are often left alone. Step 4: concerning,
//   the mother is willing.
// Episode 3 (28 September 2026): bruises on the mother; she took no steps towards help
//   for the children; school and CLB remain worried; she says she stops the care.
//   Step 5: safety not restored; step 6: the VK is involved, the mother is told first.

RuleSet: FindingCommon(id, patient, encounter, time, performer)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/finding"
* identifier[kindreflex].value = "{id}"
* status = #final
* category[socialHistory] = $obs-category#social-history
* subject.reference = "{patient}"
* encounter.reference = "{encounter}"
* effectiveDateTime = "{time}"
* performer[0].reference = "{performer}"

RuleSet: ChildLucasContent(id, patient)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/child"
* identifier[kindreflex].value = "{id}"
* extension[livesWith].valueCoding = LivesWithCS#permanently "Woont permanent bij de cliënt"
* patient.reference = "{patient}"
* relationship = $v3-RoleCode#NCHILD "natural child"
* name[0].given[0] = "Lucas"
* name[0].family = "Peeters"
* gender = #male
* birthDate = "2022-11-20"

RuleSet: ChildEmmaContent(id, patient)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/child"
* identifier[kindreflex].value = "{id}"
* extension[livesWith].valueCoding = LivesWithCS#permanently "Woont permanent bij de cliënt"
* patient.reference = "{patient}"
* relationship = $v3-RoleCode#NCHILD "natural child"
* name[0].given[0] = "Emma"
* name[0].family = "Peeters"
* gender = #female
* birthDate = "2017-09-05"

RuleSet: Step1Content(lucas, emma)
* code = KindreflexStepCS#step-1
* valueBoolean = true
* focus[0].reference = "{lucas}"
* focus[1].reference = "{emma}"
* component[planVersion].valueString = "kindreflex-generic-2021"

RuleSet: Step2Content(lucas, emma)
* code = KindreflexStepCS#step-2
* valueCodeableConcept = SafetyAssessmentCS#niet-pluis "Niet-pluisgevoel"
* focus[0].reference = "{lucas}"
* focus[1].reference = "{emma}"
* component[reason][0].valueString = "Alleenstaande moeder slaagt er niet in de dag te organiseren"
* component[reason][1].valueString = "Depressieve gedachten"
* component[reason][2].valueString = "Financieel moeilijk"
* component[whoHelps].valueString = "Niemand vast; soms een buurvrouw"
* component[consultation][0].valueCodeableConcept = ConsultationTypeCS#colleague "Overleg met een collega"
* component[planVersion].valueString = "kindreflex-generic-2021"

RuleSet: Step4Content(lucas, emma)
* code = KindreflexStepCS#step-4
* valueCodeableConcept = TeamDecisionCS#concerning-willing "Verontrustend, maar de cliënt is bereid mee te werken"
* focus[0].reference = "{lucas}"
* focus[1].reference = "{emma}"
* insert FactorComponent(0, parental-mental-illness, risk, Depressieve gedachten)
* insert FactorComponent(1, high-stress, risk, Slaagt er niet in de dag te organiseren)
* insert FactorComponent(2, financial-problems, risk, Financieel moeilijk)
* insert FactorComponent(3, partner-hostile-to-children, risk, Nieuwe partner ergert zich aan de kinderen)
* insert FactorComponent(4, children-left-alone, risk, Kinderen blijven dikwijls alleen thuis)
* insert FactorComponent(5, school-absence, risk, Kinderen vaak afwezig op school; geen boterhammen mee)
* insert FactorComponent(6, asks-for-help, protective, Moeder wil hulp voor de kinderen)
* component[consultation][0].valueCodeableConcept = ConsultationTypeCS#colleague "Overleg met een collega"
* component[consultation][1].valueCodeableConcept = ConsultationTypeCS#clb "Overleg met het CLB"
* component[discussedWithPatient].valueBoolean = true
* component[planVersion].valueString = "kindreflex-generic-2021"

RuleSet: FactorComponent(i, code, kind, text)
* component[factor][{i}].valueCodeableConcept = FactorCS#{code}
* component[factor][{i}].valueCodeableConcept.text = "{text}"
* component[factor][{i}].extension[0].url = "https://kindreflex-ed.be/fhir/StructureDefinition/factor-kind"
* component[factor][{i}].extension[0].valueCoding = FactorKindCS#{kind}

RuleSet: Step5Content(lucas, emma)
* code = KindreflexStepCS#step-5
* valueCodeableConcept = SafetyProgressCS#not-restored "De veiligheid is niet hersteld"
* focus[0].reference = "{lucas}"
* focus[1].reference = "{emma}"
* component[safetyAction][0].valueCodeableConcept = SafetyActionCS#revisit-parenthood
* component[safetyAction][1].valueCodeableConcept = SafetyActionCS#anonymous-consultation
* component[consultation][0].valueCodeableConcept = ConsultationTypeCS#vk-anonymous
* component[consultation][1].valueCodeableConcept = ConsultationTypeCS#clb
* component[planVersion].valueString = "kindreflex-generic-2021"
* note[0].text = "Blauwe plekken bij de cliënte. Geen stappen gezet naar hulp voor de kinderen; school en CLB blijven ongerust. Cliënte geeft aan de begeleiding stop te zetten."

RuleSet: Step6Content(lucas, emma, referral)
* code = KindreflexStepCS#step-6
* basedOn[0].reference = "{referral}"
* valueCodeableConcept = PartnerTypeCS#vk "Vertrouwenscentrum Kindermishandeling (VK)"
* focus[0].reference = "{lucas}"
* focus[1].reference = "{emma}"
* component[withCooperation].valueBoolean = false
* component[patientInformed].valueBoolean = true
* component[followUp][0].valueString = "VK neemt contact op met de moeder en de school binnen de week"
* component[followUp][1].valueString = "Sociale dienst blijft aanspreekpunt bij een nieuwe aanmelding op spoed"
* component[planVersion].valueString = "kindreflex-generic-2021"

RuleSet: ReferralContent(id, patient, encounter, requester, vk, reason, lucas, emma)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/referral"
* identifier[kindreflex].value = "{id}"
* extension[patientInformed].valueBoolean = true
* status = #active
* intent = #order
* code = RecordTypeCS#referral
* subject.reference = "{patient}"
* encounter.reference = "{encounter}"
* authoredOn = "2026-09-28T11:15:00+02:00"
* requester.reference = "{requester}"
* performerType = PartnerTypeCS#vk "Vertrouwenscentrum Kindermishandeling (VK)"
* performer[0].reference = "{vk}"
* reasonReference[0].reference = "{reason}"
* supportingInfo[0].reference = "{lucas}"
* supportingInfo[1].reference = "{emma}"

RuleSet: ConcernContent(id, patient, encounter, author)
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/concern"
* identifier[kindreflex].value = "{id}"
* extension[lastStep].valueCoding = KindreflexStepCS#step-6
* status = #active
* category[safety] = $flag-category#safety
* code = RecordTypeCS#open-concern
* subject.reference = "{patient}"
* encounter.reference = "{encounter}"
* period.start = "2026-03-02T21:45:00+01:00"
* author.reference = "{author}"

RuleSet: VkContent
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/partner"
* identifier[kindreflex].value = "vk-oost-vlaanderen"
* active = true
* type = PartnerTypeCS#vk "Vertrouwenscentrum Kindermishandeling (VK)"
* name = "Vertrouwenscentrum Kindermishandeling Oost-Vlaanderen"
* telecom[0].system = #phone
* telecom[0].value = "09 216 73 30"

RuleSet: ProvenanceAuthor(author, time)
* recorded = "{time}"
* activity = $v3-DataOperation#CREATE
* agent[0].type = $provenance-participant-type#author
* agent[0].who.reference = "{author}"
