// Extensions of the Kindreflex guide

Extension: LivesWithExt
Id: lives-with
Title: "Lives with the patient"
Description: "Whether the child lives with the patient: permanently, part-time or not."
* insert Published
* ^context[0].type = #element
* ^context[0].expression = "RelatedPerson"
* value[x] 1..1
* value[x] only Coding
* valueCoding from LivesWithVS (required)

Extension: PatientInformedExt
Id: patient-informed
Title: "Patient informed"
Description: "Whether the patient was informed and prepared before the referral (true) or not (false: only with acute danger, with the reason in a note)."
* insert Published
* ^context[0].type = #element
* ^context[0].expression = "ServiceRequest"
* value[x] 1..1
* value[x] only boolean

Extension: ConcernedChildExt
Id: concerned-child
Title: "Child concerned"
Description: "The child (a RelatedPerson of profile kindreflex-child) a component is about, e.g. the child who was heard and consented at step 4."
* insert Published
* ^context[0].type = #element
* ^context[0].expression = "Observation.component"
* value[x] 1..1
* value[x] only Reference(KindreflexChild)

Extension: FactorKindExt
Id: factor-kind
Title: "Kind of factor"
Description: "Whether a factor component is a risk or a protective factor (needed because a hospital may use factor codes of its own)."
* insert Published
* ^context[0].type = #element
* ^context[0].expression = "Observation.component"
* value[x] 1..1
* value[x] only Coding
* valueCoding from FactorKindVS (required)

Extension: ConcernLastStepExt
Id: concern-last-step
Title: "Last Kindreflex step"
Description: "The step of the latest Kindreflex finding of the open concern."
* insert Published
* ^context[0].type = #element
* ^context[0].expression = "Flag"
* value[x] 1..1
* value[x] only Coding
* valueCoding from KindreflexStepVS (required)

Extension: ConcernTriggerExt
Id: concern-trigger
Title: "Hague trigger of the concern"
Description: "The Hague Protocol trigger group that prompted the Kindreflex, if any."
* insert Published
* ^context[0].type = #element
* ^context[0].expression = "Flag"
* value[x] 1..1
* value[x] only Coding
* valueCoding from HagueTriggerVS (required)

Extension: FollowUpDateExt
Id: follow-up-date
Title: "Follow-up date"
Description: "When to check on an action agreed at step 5 (on the agreed-action component)."
* insert Published
* ^context[0].type = #element
* ^context[0].expression = "Observation.component"
* value[x] 1..1
* value[x] only date

Extension: ConcernCloseReasonExt
Id: concern-close-reason
Title: "Why the concern was closed"
Description: "Why the social service closed the Kindreflex case (R4 Flag has no statusReason): a code of case-close-reason, with the specifics in text. Present on an inactive concern Flag."
* insert Published
* ^context[0].type = #element
* ^context[0].expression = "Flag"
* value[x] 1..1
* value[x] only CodeableConcept
* valueCodeableConcept from CaseCloseReasonVS (required)
