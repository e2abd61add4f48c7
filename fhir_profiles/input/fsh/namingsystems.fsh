// Identifier systems for the business identifiers of the resources Kindreflex writes.
// The service generates the value (a UUID) when the input is committed locally, so a
// repeated write is a conditional create on identifier=system|value. A partner's value is
// its entry's id in the hospital's partner directory instead.

RuleSet: KRNamingSystem(id, name, what, value)
* name = "{name}"
* status = #draft
* kind = #identifier
* insert PublishedInstance
* description = "Business identifiers of {what} written by Kindreflex-ED (value: {value})."
* uniqueId[0].type = #uri
* uniqueId[0].value = "https://kindreflex-ed.be/fhir/sid/{id}"
* uniqueId[0].preferred = true

Instance: sid-child
InstanceOf: NamingSystem
Usage: #definition
Title: "Kindreflex child identifier"
* insert KRNamingSystem(child, KindreflexChildIdentifier, children (RelatedPerson\), a UUID)

Instance: sid-finding
InstanceOf: NamingSystem
Usage: #definition
Title: "Kindreflex finding identifier"
* insert KRNamingSystem(finding, KindreflexFindingIdentifier, step findings and expecting-a-child observations (Observation\), a UUID)

Instance: sid-referral
InstanceOf: NamingSystem
Usage: #definition
Title: "Kindreflex referral identifier"
* insert KRNamingSystem(referral, KindreflexReferralIdentifier, referrals (ServiceRequest\), a UUID)

Instance: sid-concern
InstanceOf: NamingSystem
Usage: #definition
Title: "Kindreflex open concern identifier"
* insert KRNamingSystem(concern, KindreflexConcernIdentifier, open concerns (Flag\), a UUID)

Instance: sid-partner
InstanceOf: NamingSystem
Usage: #definition
Title: "Kindreflex partner directory identifier"
* insert KRNamingSystem(partner, KindreflexPartnerIdentifier, partner organisations of the regional directory (Organization\), the id of the entry in the hospital's partner directory such as vk-oost-vlaanderen)
