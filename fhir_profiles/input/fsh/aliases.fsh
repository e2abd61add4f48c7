// Aliases for systems we reuse (never for our own canonicals: those come from the CodeSystem names)
Alias: $sct = http://snomed.info/sct
Alias: $loinc = http://loinc.org
Alias: $icd10cm = http://hl7.org/fhir/sid/icd-10-cm
Alias: $v3-RoleCode = http://terminology.hl7.org/CodeSystem/v3-RoleCode
Alias: $obs-category = http://terminology.hl7.org/CodeSystem/observation-category
Alias: $flag-category = http://terminology.hl7.org/CodeSystem/flag-category
Alias: $provenance-participant-type = http://terminology.hl7.org/CodeSystem/provenance-participant-type
Alias: $v3-DataOperation = http://terminology.hl7.org/CodeSystem/v3-DataOperation
Alias: $usage-context-type = http://terminology.hl7.org/CodeSystem/usage-context-type
// HL7 Belgium federal core naming systems (https://www.ehealth.fgov.be/standards/fhir/core)
Alias: $be-ssin = https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/ssin
Alias: $be-nihdi-professional = https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/nihdi-professional
Alias: $be-cbe = https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/cbe
Alias: $be-nihdi-organization = https://www.ehealth.fgov.be/standards/fhir/core/NamingSystem/nihdi-organization
Alias: $request-status = http://hl7.org/fhir/request-status
Alias: $request-priority = http://hl7.org/fhir/request-priority
Alias: $measure-population = http://terminology.hl7.org/CodeSystem/measure-population
