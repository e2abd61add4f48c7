// ValueSets. Each Kindreflex CodeSystem has a ValueSet with the same id holding all its codes.

RuleSet: KRValueSet(id, title)
* ^url = "https://kindreflex-ed.be/fhir/ValueSet/{id}"
* ^status = #draft
* ^experimental = false
* ^language = #nl-BE
* insert Published
* ^title = "{title}"

// A ValueSet listing concepts of an English-only code system (SNOMED CT, ICD-10-CM, HL7
// v3 and FHIR code systems) with their displays: its language is English, the language of
// those displays (a validator checks a ValueSet's displays in its language, and a reader
// takes them as Dutch when it says nl-BE). Our own codes' Dutch displays come from our
// CodeSystems (nl-BE), not from these ValueSets.
RuleSet: EnglishDisplays
* ^language = #en

ValueSet: KindreflexStepVS
Id: kindreflex-step
Title: "Kindreflex steps"
Description: "All six Kindreflex steps."
* insert KRValueSet(kindreflex-step, Kindreflex steps)
* include codes from system KindreflexStepCS

ValueSet: SafetyAssessmentVS
Id: safety-assessment
Title: "Step 2 safety assessment"
Description: "Outcomes of step 2."
* insert KRValueSet(safety-assessment, Step 2 safety assessment)
* include codes from system SafetyAssessmentCS

ValueSet: TeamDecisionVS
Id: team-decision
Title: "Step 4 team decision"
Description: "Outcomes of the step 4 team decision."
* insert KRValueSet(team-decision, Step 4 team decision)
* include codes from system TeamDecisionCS

ValueSet: SafetyProgressVS
Id: safety-progress
Title: "Step 5 progress"
Description: "Outcomes of step 5."
* insert KRValueSet(safety-progress, Step 5 progress)
* include codes from system SafetyProgressCS

ValueSet: LivesWithVS
Id: lives-with
Title: "Lives with the patient"
Description: "Whether a child lives with the patient."
* insert KRValueSet(lives-with, Lives with the patient)
* include codes from system LivesWithCS

ValueSet: SupportActionVS
Id: support-action
Title: "Step 3 support actions"
Description: "How the patient was supported as a parent."
* insert KRValueSet(support-action, Step 3 support actions)
* include codes from system SupportActionCS

ValueSet: SafetyActionVS
Id: safety-action
Title: "Step 5 safety actions"
Description: "Actions to restore safety."
* insert KRValueSet(safety-action, Step 5 safety actions)
* include codes from system SafetyActionCS

ValueSet: HagueTriggerVS
Id: hague-trigger
Title: "Hague Protocol trigger groups"
Description: "The three trigger groups (not the clinical codes: see the three hague-trigger-* ValueSets)."
* insert KRValueSet(hague-trigger, Hague Protocol trigger groups)
* include codes from system HagueTriggerCS

ValueSet: ConsultationTypeVS
Id: consultation-type
Title: "Consultations"
Description: "With whom the situation was discussed."
* insert KRValueSet(consultation-type, Consultations)
* include codes from system ConsultationTypeCS

ValueSet: PartnerTypeVS
Id: partner-type
Title: "Partner types and referral targets"
Description: "Kinds of partner organisations and referral targets. Bound extensibly on the partner Organization so a region can add its own kinds."
* insert KRValueSet(partner-type, Partner types and referral targets)
* include codes from system PartnerTypeCS

ValueSet: MandatedTargetVS
Id: mandated-target
Title: "Step 6 targets"
Description: "Whom step 6 involves: a mandated facility (VK, OCJ) or, with acute danger, the public prosecutor or the police."
* insert KRValueSet(mandated-target, Step 6 targets)
* include PartnerTypeCS#vk
* include PartnerTypeCS#ocj
* include PartnerTypeCS#parket
* include PartnerTypeCS#police

ValueSet: PregnancyOfVS
Id: pregnancy-of
Title: "Pregnancy of"
Description: "Who is pregnant."
* insert KRValueSet(pregnancy-of, Pregnancy of)
* include codes from system PregnancyOfCS

ValueSet: FactorVS
Id: factor
Title: "Risk and protective factors"
Description: "The starting catalogue of risk and protective factors. Bound extensibly: a hospital may record factors from its own assessment instrument when no code here fits."
* insert KRValueSet(factor, Risk and protective factors)
* include codes from system FactorCS

ValueSet: RecordTypeVS
Id: record-type
Title: "Kindreflex record types"
Description: "Codes of the non-step Kindreflex records."
* insert KRValueSet(record-type, Kindreflex record types)
* include codes from system RecordTypeCS

ValueSet: FindingComponentVS
Id: finding-component
Title: "Step finding components"
Description: "Component codes of the step findings."
* insert KRValueSet(finding-component, Step finding components)
* include codes from system FindingComponentCS

ValueSet: ChildRelationshipVS
Id: child-relationship
Title: "Child relationships"
Description: "How a child relates to the patient, from HL7 v3 RoleCode (terminology.hl7.org, as shipped with FHIR R4 4.0.1)."
* insert KRValueSet(child-relationship, Child relationships)
* insert EnglishDisplays
* include $v3-RoleCode#CHILD "child"
* include $v3-RoleCode#NCHILD "natural child"
* include $v3-RoleCode#STPCHLD "step child"
* include $v3-RoleCode#CHLDFOST "foster child"
* include $v3-RoleCode#CHLDADOPT "adopted child"
* include $v3-RoleCode#GRNDCHILD "grandchild"
* include $v3-RoleCode#NIENEPH "niece/nephew"

ValueSet: SupportServiceVS
Id: support-service
Title: "Supporting services"
Description: "Services that support the patient or the children at steps 3 and 5: every partner type except the step 6 targets (VK, OCJ, parket, police)."
* insert KRValueSet(support-service, Supporting services)
* include codes from system PartnerTypeCS
* exclude PartnerTypeCS#vk
* exclude PartnerTypeCS#ocj
* exclude PartnerTypeCS#parket
* exclude PartnerTypeCS#police

ValueSet: FactorKindVS
Id: factor-kind
Title: "Kind of factor"
Description: "Risk or protective."
* insert KRValueSet(factor-kind, Kind of factor)
* include codes from system FactorKindCS

ValueSet: ProvenanceActivityVS
Id: provenance-activity
Title: "Provenance activity"
Description: "What a Kindreflex write did: create or update (HL7 v3 DataOperation)."
* insert KRValueSet(provenance-activity, Provenance activity)
* insert EnglishDisplays
* include $v3-DataOperation#CREATE "create"
* include $v3-DataOperation#UPDATE "revise"

ValueSet: ProvenanceAuthorRoleVS
Id: provenance-author-role
Title: "Provenance author role"
Description: "The agent type of the user who recorded Kindreflex data (provenance-participant-type author)."
* insert KRValueSet(provenance-author-role, Provenance author role)
* insert EnglishDisplays
* include $provenance-participant-type#author "Author"

ValueSet: KeyPersonRoleVS
Id: key-person-role
Title: "Step 4 key person"
Description: "Adult key persons heard at step 4."
* insert KRValueSet(key-person-role, Step 4 key person)
* include codes from system KeyPersonRoleCS

ValueSet: ContactChannelVS
Id: contact-channel
Title: "Contact channel"
Description: "How the mandated facility was contacted."
* insert KRValueSet(contact-channel, Contact channel)
* include codes from system ContactChannelCS

ValueSet: CaseCloseReasonVS
Id: case-close-reason
Title: "Reason a Kindreflex case was closed"
Description: "Why a case was closed."
* insert KRValueSet(case-close-reason, Reason a Kindreflex case was closed)
* include codes from system CaseCloseReasonCS

ValueSet: CdsOverrideReasonVS
Id: cds-override-reason
Title: "Reasons to override the Kindreflex card"
Description: "The card's override reasons."
* insert KRValueSet(cds-override-reason, Reasons to override the Kindreflex card)
* include codes from system CdsOverrideReasonCS

ValueSet: KindreflexReferralStatusVS
Id: referral-status
Title: "Referral status"
Description: "The statuses a Kindreflex referral goes through (a subset of FHIR request-status): active when sent, on-hold when paused, completed or revoked when finished. (An EHR that retracts a referral written in error sets entered-in-error, outside this set: the service then reads it as retracted, and no longer follows it up.)"
* insert KRValueSet(referral-status, Referral status)
* include $request-status#active
* include $request-status#on-hold
* include $request-status#completed
* include $request-status#revoked

ValueSet: KindreflexReferralPriorityVS
Id: referral-priority
Title: "Referral priority"
Description: "The priorities a Kindreflex referral is written with (a subset of FHIR request-priority): stat when it follows from acute danger (to be actioned immediately: an emergency), else routine."
* insert KRValueSet(referral-priority, Referral priority)
* insert EnglishDisplays
* include $request-priority#routine "Routine"
* include $request-priority#stat "STAT"
