// FHIRPath invariants: the protocol's branch rules that one resource can show.
// (Rules that need the whole case, such as "parket or police only after acute danger",
// are checked by service/protocol.py, not here.)

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
Expression: "value.coding.where(code = 'niet-pluis' or code = 'unclear').exists() implies component.where(code.coding.code = 'reason' and (value as string).replace(' ', '').length() > 0).exists()"

Invariant: kr-s2-2
Description: "Acute danger cannot go with 'no concern'."
Severity: #error
Expression: "component.where(code.coding.code = 'urgency' and (value as boolean) = true).exists() implies value.coding.where(code = 'no-concern').empty()"

Invariant: kr-s3-1
Description: "Step 3 records how the patient was supported: at least one support action or a note."
Severity: #error
Expression: "component.where(code.coding.code = 'support-action').exists() or note.where(text.replace(' ', '').length() > 0).exists()"

Invariant: kr-s4-1
Description: "The team decision is discussed with at least one colleague, expert, CLB, VK or OCJ, except with acute danger."
Severity: #error
Expression: "value.coding.where(code = 'acute-danger').exists() or component.where(code.coding.code = 'consultation').exists()"

Invariant: kr-s4-2
Description: "A decision on the patient's willingness (concerning-willing or concerning-unwilling) requires that the worries were discussed with the patient."
Severity: #error
Expression: "value.coding.where(code = 'concerning-willing' or code = 'concerning-unwilling').exists() implies component.where(code.coding.code = 'discussed-with-patient' and (value as boolean) = true).exists()"

Invariant: kr-s4-3
Description: "A child is only listened to with the child's own consent."
Severity: #error
Expression: "component.where(code.coding.code = 'child-consent').all((value as boolean) = true)"

Invariant: kr-s6-1
Description: "The OCJ is involved only without the patient's cooperation."
Severity: #error
Expression: "value.coding.where(code = 'ocj').exists() implies component.where(code.coding.code = 'with-cooperation' and (value as boolean) = false).exists()"

Invariant: kr-s6-2
Description: "When the patient was not informed before the referral, the reason is recorded."
Severity: #error
Expression: "component.where(code.coding.code = 'patient-informed' and (value as boolean) = false).exists() implies component.where(code.coding.code = 'not-informed-reason' and (value as string).replace(' ', '').length() > 0).exists()"

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
Expression: "component.where(code.coding.code = 'factor').all(extension('https://kindreflex-ed.be/fhir/StructureDefinition/factor-kind').exists())"

Invariant: kr-s4-5
Description: "Every child-consent component names the child (extension concerned-child)."
Severity: #error
Expression: "component.where(code.coding.code = 'child-consent').all(extension('https://kindreflex-ed.be/fhir/StructureDefinition/concerned-child').exists())"

Invariant: kr-s4-6
Description: "The patient's explanation is recorded only when the worries were discussed with the patient."
Severity: #error
Expression: "component.where(code.coding.code = 'patient-explanation').exists() implies component.where(code.coding.code = 'discussed-with-patient' and (value as boolean) = true).exists()"

Invariant: kr-s4-7
Description: "A key person 'other' says who in the text."
Severity: #error
Expression: "component.where(code.coding.code = 'key-person' and value.coding.code = 'other').all((value as CodeableConcept).text.replace(' ', '').length() > 0)"

Invariant: kr-s5-1
Description: "Every agreed-action component has a text."
Severity: #error
Expression: "component.where(code.coding.code = 'agreed-action').all((value as string).replace(' ', '').length() > 0)"

Invariant: kr-s6-3
Description: "A contact with the facility has its date, the person and the channel."
Severity: #error
Expression: "(component.where(code.coding.code = 'contact-date').exists() = component.where(code.coding.code = 'contact-person').exists()) and (component.where(code.coding.code = 'contact-date').exists() = component.where(code.coding.code = 'contact-channel').exists())"

Invariant: kr-flag-2
Description: "An inactive concern says why it was closed (extension concern-close-reason); 'other' with a text."
Severity: #error
Expression: "status = 'inactive' implies extension('https://kindreflex-ed.be/fhir/StructureDefinition/concern-close-reason').where(value.coding.code != 'other' or value.text.replace(' ', '').length() > 0).exists()"

Invariant: kr-s5-2
Description: "An agreed action has at most one follow-up date (extension follow-up-date), and only an agreed action has one."
Severity: #error
Expression: "component.where(extension.where(url = 'https://kindreflex-ed.be/fhir/StructureDefinition/follow-up-date').count() > 1).empty() and component.where(code.coding.code != 'agreed-action' and extension.where(url = 'https://kindreflex-ed.be/fhir/StructureDefinition/follow-up-date').exists()).empty()"

Invariant: kr-s4-8
Description: "Every child-say component names the child (extension concerned-child), a child heard with consent."
Severity: #error
Expression: "component.where(code.coding.code = 'child-say').all(extension('https://kindreflex-ed.be/fhir/StructureDefinition/concerned-child').exists())"
