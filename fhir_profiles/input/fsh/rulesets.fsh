// Shared rules of the profiles

// A business identifier under our canonical base, for idempotent (conditional) writes
RuleSet: BusinessIdentifier(sid)
* identifier 1..* MS
* identifier ^slicing.discriminator.type = #value
* identifier ^slicing.discriminator.path = "system"
* identifier ^slicing.rules = #open
* identifier ^slicing.description = "The Kindreflex business identifier, plus any other identifier"
* identifier contains kindreflex 1..1 MS
* identifier[kindreflex] ^short = "Kindreflex business identifier (UUID)"
* identifier[kindreflex].system 1..1
* identifier[kindreflex].system = "https://kindreflex-ed.be/fhir/sid/{sid}" (exactly)
* identifier[kindreflex].value 1..1

// Components sliced by their code (closed: only the components a step defines)
RuleSet: ComponentSlicing
* component ^slicing.discriminator.type = #pattern
* component ^slicing.discriminator.path = "code"
* component ^slicing.rules = #closed
* component ^slicing.description = "Components by code (FindingComponentCS)"

RuleSet: BooleanComponent(name, code, card, short)
* component contains {name} {card} MS
* component[{name}] ^short = "{short}"
* component[{name}].code = FindingComponentCS#{code}
* component[{name}].value[x] 1..1
* component[{name}].value[x] only boolean

RuleSet: StringComponent(name, code, card, short)
* component contains {name} {card} MS
* component[{name}] ^short = "{short}"
* component[{name}].code = FindingComponentCS#{code}
* component[{name}].value[x] 1..1
* component[{name}].value[x] only string

RuleSet: DateComponent(name, code, card, short)
* component contains {name} {card} MS
* component[{name}] ^short = "{short}"
* component[{name}].code = FindingComponentCS#{code}
* component[{name}].value[x] 1..1
* component[{name}].value[x] only dateTime

RuleSet: CodedComponent(name, code, card, vs, strength, short)
* component contains {name} {card} MS
* component[{name}] ^short = "{short}"
* component[{name}].code = FindingComponentCS#{code}
* component[{name}].value[x] 1..1
* component[{name}].value[x] only CodeableConcept
* component[{name}].value[x] from {vs} ({strength})

RuleSet: PlanVersionComponent
* insert StringComponent(planVersion, plan-version, 0..1, Version of the facility's plan wording shown to the user)

RuleSet: ConsultationComponent
* insert CodedComponent(consultation, consultation, 0..*, ConsultationTypeVS, required, With whom the situation was discussed)

// A required category, as a slice (a pattern on the whole repeating element is not
// what we mean: other categories may be added)
RuleSet: CategorySlice(name, concept)
* category 1..* MS
* category ^slicing.discriminator.type = #pattern
* category ^slicing.discriminator.path = "$this"
* category ^slicing.rules = #open
* category contains {name} 1..1 MS
* category[{name}] = {concept}

// Who publishes each artefact, whom to contact, as of when, and for where: every profile,
// extension, CodeSystem and ValueSet (Published, caret rules) and every definitional
// instance, the NamingSystems and the Measure (PublishedInstance). Set here, not in
// sushi-config.yaml: with FSHOnly, SUSHI writes no ImplementationGuide and copies none of
// the configuration's publisher, contact, date or jurisdiction into the artefacts (it even
// clears a parent's), and the IG Publisher that would apply them (apply-contact, …) does
// not run in this build. Both RuleSets say the same; tests/fhir/test_guide_build.py checks
// that every artefact carries the same values.
// - contact: the project, reached through its canonical base; no person or phone number
//   (the guide names no individual maintainer).
// - date: the date of the guide's current content, written here by hand when the content
//   changes for a release (with version in sushi-config.yaml), never the build's date: a
//   rebuild of unchanged sources must give the same files (build stamp, build.sh).
RuleSet: Published
* ^publisher = "Kindreflex-ED project"
* ^contact[0].name = "Kindreflex-ED project"
* ^contact[0].telecom[0].system = #url
* ^contact[0].telecom[0].value = "https://kindreflex-ed.be/fhir"
* ^date = "2026-12-07"
* ^jurisdiction = urn:iso:std:iso:3166#BE "Belgium"

RuleSet: PublishedInstance
* publisher = "Kindreflex-ED project"
* contact[0].name = "Kindreflex-ED project"
* contact[0].telecom[0].system = #url
* contact[0].telecom[0].value = "https://kindreflex-ed.be/fhir"
* date = "2026-12-07"
* jurisdiction = urn:iso:std:iso:3166#BE "Belgium"

// Copyright of the external terminologies an artefact holds content of: the statements
// HL7 International and HL7 Belgium publish with such content (their QA checks for them).
// SNOMED CT is licensed: Belgium is a SNOMED International member, and a hospital's use
// falls under that membership, not under this guide. LOINC is free under its licence.
RuleSet: SnomedCopyright
* ^copyright = "This value set includes content from SNOMED CT, which is copyright © 2002+ International Health Terminology Standards Development Organisation (IHTSDO), and distributed by agreement between IHTSDO and HL7. Implementer use of SNOMED CT is not covered by this agreement."

RuleSet: LoincCopyright
* ^copyright = "This material contains content from LOINC (http://loinc.org). LOINC is copyright © 1995+ Regenstrief Institute, Inc. and the Logical Observation Identifiers Names and Codes (LOINC) Committee and is available at no cost under the license at http://loinc.org/license. LOINC® is a registered United States trademark of Regenstrief Institute, Inc."
