// Hague Protocol trigger ValueSets: clinical codes of an ED presentation that raise the
Alias: $hague-trigger = https://kindreflex-ed.be/fhir/CodeSystem/hague-trigger
// Kindreflex prompt. STARTING LISTS that a hospital extends (its ICD-10-BE and SNOMED CT
// coding). Every code below was copied from a published FHIR ValueSet named in the
// description; none was typed from memory. Each ValueSet names its trigger group in
// useContext (code focus, value = hague-trigger code).

ValueSet: HagueTriggerDomesticViolenceVS
Id: hague-trigger-domestic-violence
Title: "Hague trigger: domestic violence"
Description: """Starting list of clinical codes for intimate-partner or domestic violence. Sources:
SNOMED CT 706893006 and ICD-10-CM T74.11, T74.11XA, T74.11XS from the SHIFT task force
"SLS ValueSets" guide, ValueSet ShiftMinSDVCodes
(https://build.fhir.org/ig/JohnMoehrke/SLSValueSets/ValueSet-ShiftMinSDVCodes.html).
A hospital extends this list with its own codes."""
* insert KRValueSet(hague-trigger-domestic-violence, Hague trigger: domestic violence)
* insert EnglishDisplays
* insert SnomedCopyright
* ^useContext[0].code = $usage-context-type#focus
* ^useContext[0].valueCodeableConcept = $hague-trigger#domestic-violence
* include $sct#706893006 "Victim of intimate partner abuse"
* include $icd10cm#T74.11 "Adult physical abuse, confirmed"
* include $icd10cm#T74.11XA "Adult physical abuse, confirmed, initial encounter"
* include $icd10cm#T74.11XS "Adult physical abuse, confirmed, sequela"

ValueSet: HagueTriggerSubstanceAbuseVS
Id: hague-trigger-substance-abuse
Title: "Hague trigger: substance abuse or intoxication"
Description: """Starting list of clinical codes for substance abuse or intoxication. Sources:
SNOMED CT 5602001, 145121000119106, 6525002, 1149222004 from the SHIFT "SLS ValueSets" guide,
ValueSet ShiftMinOpioidCodes (part of ShiftMinSensitiveCodes,
https://build.fhir.org/ig/JohnMoehrke/SLSValueSets/ValueSet-ShiftMinOpioidCodes.html);
SNOMED CT 66214007 from the SHIFT SLS reference implementation guide, ValueSet
behavioral-health-multi-topic (https://build.fhir.org/ig/SHIFT-Task-Force/sls-ri-ig/ValueSet-behavioral-health-multi-topic.html);
ICD-10-CM F16.20 from the SHIFT "SLS ValueSets" guide, ValueSet LeapSlsSensitiveCodes
(https://build.fhir.org/ig/SHIFT-Task-Force/SLS-ValueSets/branches/main/ValueSet-LeapSlsSensitiveCodes.html);
ICD-10-CM F10.10, F10.120, F10.121, F10.129 from HL7 mCODE STU2.1 ValueSet elixhauser-alcohol-abuse-vs
and F11.10, F11.120, F11.129 from elixhauser-drug-abuse-vs
(https://hl7.org/fhir/us/mcode/STU2.1/ValueSet-elixhauser-alcohol-abuse-vs.html,
https://hl7.org/fhir/us/mcode/STU2.1/ValueSet-elixhauser-drug-abuse-vs.html).
A hospital extends this list with its own codes."""
* insert KRValueSet(hague-trigger-substance-abuse, Hague trigger: substance abuse or intoxication)
* insert EnglishDisplays
* insert SnomedCopyright
* ^useContext[0].code = $usage-context-type#focus
* ^useContext[0].valueCodeableConcept = $hague-trigger#substance-abuse
* include $sct#66214007 "Substance abuse (disorder)"
* include $sct#5602001 "Opioid abuse"
* include $sct#145121000119106 "Intravenous nondependent opioid abuse"
* include $sct#6525002 "Dependent drug abuse"
* include $sct#1149222004 "Overdose"
* include $icd10cm#F10.10 "Alcohol abuse, uncomplicated"
* include $icd10cm#F10.120 "Alcohol abuse with intoxication, uncomplicated"
* include $icd10cm#F10.121 "Alcohol abuse with intoxication delirium"
* include $icd10cm#F10.129 "Alcohol abuse with intoxication, unspecified"
* include $icd10cm#F11.10 "Opioid abuse, uncomplicated"
* include $icd10cm#F11.120 "Opioid abuse with intoxication, uncomplicated"
* include $icd10cm#F11.129 "Opioid abuse with intoxication, unspecified"
* include $icd10cm#F16.20 "Hallucinogen dependence, uncomplicated"

ValueSet: HagueTriggerSelfHarmPsychiatricVS
Id: hague-trigger-self-harm-psychiatric
Title: "Hague trigger: suicide attempt, self-harm or serious psychiatric problems"
Description: """Starting list of clinical codes for a suicide attempt, self-harm or serious psychiatric
problems. Sources: SNOMED CT 86849004, 287185009, 287182007 from the SHIFT "SLS ValueSets" guide,
ValueSet SyntheaSelfHarmVS (https://build.fhir.org/ig/SHIFT-Task-Force/demo-fhir-data/ValueSet-SyntheaSelfHarmVS.html;
its procedure and death codes are left out); ICD-10-CM F06.0, F06.2 from HL7 mCODE STU2.1 ValueSet
elixhauser-psychosis-vs (https://hl7.org/fhir/us/mcode/STU2.1/ValueSet-elixhauser-psychosis-vs.html).
No published source for ICD-10-CM intentional self-harm codes was at hand: a hospital adds its
ICD-10-BE self-harm codes (and further psychiatric codes) to this list. A hospital extends this list with its own codes."""
* insert KRValueSet(hague-trigger-self-harm-psychiatric, Hague trigger: suicide attempt\, self-harm or serious psychiatric problems)
* insert EnglishDisplays
* insert SnomedCopyright
* ^useContext[0].code = $usage-context-type#focus
* ^useContext[0].valueCodeableConcept = $hague-trigger#self-harm-psychiatric
* include $sct#86849004 "Suicidal poisoning (disorder)"
* include $sct#287185009 "Attempted suicide by cutting or stabbing"
* include $sct#287182007 "Attempted suicide by suffocation"
* include $icd10cm#F06.0 "Psychotic disorder w hallucin due to known physiol condition"
* include $icd10cm#F06.2 "Psychotic disorder w delusions due to known physiol cond"
