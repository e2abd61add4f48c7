// FHIRPath invariants: the protocol's branch rules that one resource can show.
// (Rules that need the whole case, such as "parket or police only after acute danger",
// are checked by service/protocol.py, not here.)

Invariant: kr-child-1
Description: "At least one relationship is a child relationship of the guide (ChildRelationshipVS, v3 RoleCode); other roles of the same person may stand beside it."
Severity: #error
Expression: "relationship.coding.where(system = 'http://terminology.hl7.org/CodeSystem/v3-RoleCode' and (code = 'CHILD' or code = 'NCHILD' or code = 'STPCHLD' or code = 'CHLDFOST' or code = 'CHLDADOPT' or code = 'GRNDCHILD' or code = 'NIENEPH')).exists()"

Invariant: kr-s1-1
Description: "Children are named in focus only when the patient cares for or expects children (value true)."
Severity: #error
Expression: "focus.exists() implies (value as boolean) = true"

Invariant: kr-s1-2
Description: "An expected child is named in hasMember only when the patient cares for or expects children (value true)."
Severity: #error
Expression: "hasMember.exists() implies (value as boolean) = true"

Invariant: kr-s2-1
Description: "A niet-pluis or unclear assessment is recorded with at least one reason."
Severity: #error
Expression: "value.coding.where(code = 'niet-pluis' or code = 'unclear').exists() implies component.where(code.coding.where(code = 'reason').exists() and (value as string).replace(' ', '').length() > 0).exists()"

Invariant: kr-s2-2
Description: "Acute danger cannot go with 'no concern'."
Severity: #error
Expression: "component.where(code.coding.where(code = 'urgency').exists() and (value as boolean) = true).exists() implies value.coding.where(code = 'no-concern').empty()"

Invariant: kr-s3-1
Description: "Step 3 records how the patient was supported: at least one support action or a note."
Severity: #error
Expression: "component.where(code.coding.where(code = 'support-action').exists()).exists() or note.where(text.replace(' ', '').length() > 0).exists()"

Invariant: kr-s4-1
Description: "The team decision is discussed with at least one colleague, expert, CLB, VK or OCJ, except with acute danger."
Severity: #error
Expression: "value.coding.where(code = 'acute-danger').exists() or component.where(code.coding.where(code = 'consultation').exists()).exists()"

Invariant: kr-s4-2
Description: "A decision on the patient's willingness (concerning-willing or concerning-unwilling) requires that the worries were discussed with the patient."
Severity: #error
Expression: "value.coding.where(code = 'concerning-willing' or code = 'concerning-unwilling').exists() implies component.where(code.coding.where(code = 'discussed-with-patient').exists() and (value as boolean) = true).exists()"

Invariant: kr-s4-3
Description: "A child is only listened to with the child's own consent."
Severity: #error
Expression: "component.where(code.coding.where(code = 'child-consent').exists()).all((value as boolean) = true)"

Invariant: kr-s6-1
Description: "The OCJ is involved only without the patient's cooperation."
Severity: #error
Expression: "value.coding.where(code = 'ocj').exists() implies component.where(code.coding.where(code = 'with-cooperation').exists() and (value as boolean) = false).exists()"

Invariant: kr-s6-2
Description: "When the patient was not informed before the referral, the reason is recorded."
Severity: #error
Expression: "component.where(code.coding.where(code = 'patient-informed').exists() and (value as boolean) = false).exists() implies component.where(code.coding.where(code = 'not-informed-reason').exists() and (value as string).replace(' ', '').length() > 0).exists()"

Invariant: kr-flag-1
Description: "An inactive concern has an end date."
Severity: #error
Expression: "status = 'inactive' implies period.end.exists()"

Invariant: kr-ref-1
Description: "When the patient was not informed before the referral, a note says why."
Severity: #error
Expression: "extension.where(url = 'https://kindreflex-ed.be/fhir/StructureDefinition/patient-informed' and (value as boolean) = false).exists() implies note.where(text.replace(' ', '').length() > 0).exists()"

Invariant: kr-ref-2
Description: "A referral to the parket or the police follows from acute danger (the protocol allows them only then): its priority is stat."
Severity: #error
Expression: "performerType.coding.where(system = 'https://kindreflex-ed.be/fhir/CodeSystem/partner-type' and (code = 'parket' or code = 'police')).exists() implies priority = 'stat'"

Invariant: kr-prov-1
Description: "One agent is the author (provenance-participant-type author): the user who recorded the data."
Severity: #error
Expression: "agent.where(type.coding.where(system = 'http://terminology.hl7.org/CodeSystem/provenance-participant-type' and code = 'author').exists() and who.reference.exists()).exists()"

Invariant: kr-s4-4
Description: "Every factor component tells whether it is a risk or a protective factor (extension factor-kind)."
Severity: #error
Expression: "component.where(code.coding.where(code = 'factor').exists()).all(extension('https://kindreflex-ed.be/fhir/StructureDefinition/factor-kind').exists())"

Invariant: kr-s4-5
Description: "Every child-consent component names the child (extension concerned-child)."
Severity: #error
Expression: "component.where(code.coding.where(code = 'child-consent').exists()).all(extension('https://kindreflex-ed.be/fhir/StructureDefinition/concerned-child').exists())"

Invariant: kr-s4-6
Description: "The patient's explanation is recorded only when the worries were discussed with the patient."
Severity: #error
Expression: "component.where(code.coding.where(code = 'patient-explanation').exists()).exists() implies component.where(code.coding.where(code = 'discussed-with-patient').exists() and (value as boolean) = true).exists()"

Invariant: kr-s4-7
Description: "A key person 'other' says who in the text."
Severity: #error
Expression: "component.where(code.coding.where(code = 'key-person').exists() and value.coding.where(code = 'other').exists()).all((value as CodeableConcept).text.replace(' ', '').length() > 0)"

Invariant: kr-s5-1
Description: "Every agreed-action component has a text."
Severity: #error
Expression: "component.where(code.coding.where(code = 'agreed-action').exists()).all((value as string).replace(' ', '').length() > 0)"

Invariant: kr-s6-3
Description: "A contact with the facility has its date, the person and the channel."
Severity: #error
Expression: "(component.where(code.coding.where(code = 'contact-date').exists()).exists() = component.where(code.coding.where(code = 'contact-person').exists()).exists()) and (component.where(code.coding.where(code = 'contact-date').exists()).exists() = component.where(code.coding.where(code = 'contact-channel').exists()).exists())"

Invariant: kr-flag-2
Description: "An inactive concern says why it was closed (extension concern-close-reason); 'other' with a text."
Severity: #error
Expression: "status = 'inactive' implies extension('https://kindreflex-ed.be/fhir/StructureDefinition/concern-close-reason').where(value.coding.where(code = 'other').empty() or value.text.replace(' ', '').length() > 0).exists()"

Invariant: kr-s5-2
Description: "An agreed action has at most one follow-up date (extension follow-up-date), and only an agreed action has one."
Severity: #error
Expression: "component.where(extension.where(url = 'https://kindreflex-ed.be/fhir/StructureDefinition/follow-up-date').count() > 1).empty() and component.where(code.coding.where(code = 'agreed-action').empty() and extension.where(url = 'https://kindreflex-ed.be/fhir/StructureDefinition/follow-up-date').exists()).empty()"

Invariant: kr-s4-8
Description: "Every child-say component names the child (extension concerned-child), a child heard with consent."
Severity: #error
Expression: "component.where(code.coding.where(code = 'child-say').exists()).all(extension('https://kindreflex-ed.be/fhir/StructureDefinition/concerned-child').exists())"

// What the service's readers need of a time and a date (service/fhir/mapping.py): a FHIR
// dateTime or date may be partial, and a finding of a day alone cannot be ordered within
// the case, nor a child born "in 2019" given an age in days. Without these, a resource
// valid against the guide made the chart or the case unreadable (found by review).

Invariant: kr-moment-1
Description: "The time is a moment: a dateTime with its time (and so, in FHIR, its time zone), not a day, a month or a year alone."
Severity: #error
Expression: "(effective as dateTime).toString().contains('T')"

Invariant: kr-child-2
Description: "The date of birth is a full date (YYYY-MM-DD), not a year or a month alone: the protocol counts the child's age in days."
Severity: #error
Expression: "birthDate.toString().length() = 10"

Invariant: kr-flag-3
Description: "The concern's start, and its end when closed, are moments: dateTimes with their time (and so their time zone)."
Severity: #error
Expression: "period.start.toString().contains('T') and (period.end.empty() or period.end.toString().contains('T'))"

Invariant: kr-day-1
Description: "Every date of a component (next follow-up, contact with the facility, expected delivery) names a day: a full date (YYYY-MM-DD) or a moment, not a month or a year alone."
Severity: #error
Expression: "component.all((value as dateTime).empty() or (value as dateTime).toString().length() >= 10)"

Invariant: kr-day-2
Description: "Every follow-up date of an agreed action (extension follow-up-date) is a full date (YYYY-MM-DD), not a month or a year alone."
Severity: #error
Expression: "component.extension.where(url = 'https://kindreflex-ed.be/fhir/StructureDefinition/follow-up-date').all(value.toString().length() = 10)"

Invariant: kr-ref-3
Description: "The referral's authoredOn is a moment: a dateTime with its time (and so its time zone), not a day, a month or a year alone."
Severity: #error
Expression: "authoredOn.toString().contains('T')"
