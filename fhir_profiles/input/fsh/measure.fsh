// The monitoring figures (issue 5 §6): what the inspectorate (Zorginspectie) asks of a
// hospital applying the Kindreflex in its emergency department. The service reports them
// as a summary MeasureReport on this Measure (smart_app/monitoring.py); the figures are
// computed by service/monitoring.py, whose Figure enum carries exactly these codes.

CodeSystem: MonitoringFigureCS
Id: monitoring-figure
Title: "Kindreflex monitoring figures"
Description: "The figures of the Kindreflex monitoring report of an emergency department, for a period. Each is a count of presentations, cards, findings, children or cases, never a list of patients."
* insert KRCodeSystem(monitoring-figure, Kindreflex monitoring figures)
* #presentations-with-card "Spoedpresentaties van volwassenen met een Kindreflex-kaart" "ED presentations (an encounter, or a patient's day without one) for which the CDS service returned a card; broken down by the card's indicator (info, warning)."
* insert Tr(presentations-with-card, Présentations d'adultes aux urgences avec une carte Kindreflex, Adult ED presentations that got a Kindreflex card)
* #cards-accepted "Kaarten aanvaard" "Cards the user accepted (CDS Hooks feedback)."
* insert Tr(cards-accepted, Cartes acceptées, Cards accepted)
* #cards-overridden "Kaarten genegeerd" "Cards the user overrode (CDS Hooks feedback); broken down by the override reason."
* insert Tr(cards-overridden, Cartes ignorées, Cards overridden)
* #step-1-done "Stap 1 uitgevoerd" "Step 1 findings recorded (the conversation about children and parenthood)."
* insert Tr(step-1-done, Étape 1 effectuée, Step 1 done)
* #children-recorded "Kinderen geregistreerd" "Children named in the step 1 findings (a child named at two presentations counts twice)."
* insert Tr(children-recorded, Enfants enregistrés, Children recorded)
* #niet-pluis "Niet-pluisgevoel" "Step 2 findings with a niet-pluis feeling."
* insert Tr(niet-pluis, Sentiment que quelque chose ne va pas, Niet-pluis (gut feeling that something is wrong\))
* #unclear "Onduidelijke situatie" "Step 2 findings with an unclear situation at home (onduidelijk); like a niet-pluis feeling it leads to step 4."
* insert Tr(unclear, Situation peu claire, Unclear situation)
* #step-2-acute-danger "Stap 2 met acuut gevaar (niet-pluis of onduidelijk)" "Step 2 findings with acute danger to a child. Each is a niet-pluis or unclear finding and counts there as well; it leads to step 4 or straight to step 6 (public prosecutor and/or police)."
* insert Tr(step-2-acute-danger, Étape 2 avec danger aigu (niet-pluis ou situation peu claire\), Step 2 with acute danger (niet-pluis or unclear\))
* #step-4-reached "Stap 4 bereikt" "Cases (concerns) with a step 4 finding recorded in the period."
* insert Tr(step-4-reached, Étape 4 atteinte, Step 4 reached)
* #step-5-reached "Stap 5 bereikt" "Cases (concerns) with a step 5 finding recorded in the period."
* insert Tr(step-5-reached, Étape 5 atteinte, Step 5 reached)
* #step-6-reached "Stap 6 bereikt" "Cases (concerns) with a step 6 finding recorded in the period."
* insert Tr(step-6-reached, Étape 6 atteinte, Step 6 reached)
* #referrals "Doorverwijzingen" "Step 6 referrals; broken down by target (partner-type: vk, ocj, parket, police)."
* insert Tr(referrals, Orientations, Referrals)
* #time-to-decision "Mediane tijd van signaal tot teambeslissing" "Median time in hours from a case's flag (step 2) to its first team decision (step 4) recorded in the period; the population is the number of cases decided."
* insert Tr(time-to-decision, Délai médian du signal à la décision d'équipe, Median time from flag to team decision)

CodeSystem: MonitoringBreakdownCS
Id: monitoring-breakdown
Title: "Kindreflex monitoring breakdowns"
Description: "What a monitoring figure is broken down by (MeasureReport stratifiers)."
* insert KRCodeSystem(monitoring-breakdown, Kindreflex monitoring breakdowns)
* #indicator "Soort kaart" "The card's CDS Hooks indicator: info or warning."
* insert Tr(indicator, Type de carte, Card indicator)
* #override-reason "Reden om te negeren" "The override reason the EHR reported with the feedback (none when it sent none)."
* insert Tr(override-reason, Raison d'ignorer, Override reason)
* #referral-target "Doel van de doorverwijzing" "The referral's target (partner-type)."
* insert Tr(referral-target, Destinataire de l'orientation, Referral target)

// A cohort measure: each figure is a group (group.code: the figure), whose one population
// is the initial population it counts (population.code is bound extensibly to FHIR's
// measure-population; a cohort measure has only the initial population).
RuleSet: Figure(code, description)
* group[+].code = MonitoringFigureCS#{code}
* group[=].population[+].code = $measure-population#initial-population "Initial Population"
* group[=].population[=].description = "{description}"
* group[=].population[=].criteria.language = #text/plain
* group[=].population[=].criteria.expression = "computed by the Kindreflex-ED service from its own records (service/monitoring.py)"

Instance: kindreflex-ed-monitoring
InstanceOf: Measure
Usage: #definition
Title: "Kindreflex op de spoedgevallendienst: monitoring"
Description: "The figures an inspector asks of an emergency department applying the Kindreflex, for a period. Reported as a summary MeasureReport, one group per figure; counts only, never patients."
// base R4 Measure, named so that the guide's example tests validate it too
* meta.profile = "http://hl7.org/fhir/StructureDefinition/Measure"
* url = "https://kindreflex-ed.be/fhir/Measure/kindreflex-ed-monitoring"
* name = "KindreflexEdMonitoring"
// SUSHI gives the guide's version (sushi-config.yaml) to profiles, CodeSystems and
// ValueSets, not to an instance: kept equal by tests/fhir/test_guide_build.py
* version = "0.1.0"
* title = "Kindreflex op de spoedgevallendienst: monitoring"
* status = #draft
* experimental = false
* language = #nl-BE
* insert PublishedInstance
* description = "The figures an inspector asks of an emergency department applying the Kindreflex, for a period. Counts only, never patients."
* scoring = http://terminology.hl7.org/CodeSystem/measure-scoring#cohort
* insert Figure(presentations-with-card, [[Distinct ED presentations with a card issued in the period]])
* group[=].stratifier[+].code = MonitoringBreakdownCS#indicator
* insert Figure(cards-accepted, [[Cards accepted in the period]])
* insert Figure(cards-overridden, [[Cards overridden in the period]])
* group[=].stratifier[+].code = MonitoringBreakdownCS#override-reason
* insert Figure(step-1-done, [[Step 1 findings saved in the period]])
* insert Figure(children-recorded, [[Children named in those step 1 findings]])
* insert Figure(niet-pluis, [[Step 2 findings with a niet-pluis feeling]])
* insert Figure(unclear, [[Step 2 findings with an unclear situation]])
* insert Figure(step-2-acute-danger, [[Step 2 findings with acute danger, each also a niet-pluis or unclear finding]])
* insert Figure(step-4-reached, [[Cases with a step 4 finding]])
* insert Figure(step-5-reached, [[Cases with a step 5 finding]])
* insert Figure(step-6-reached, [[Cases with a step 6 finding]])
* insert Figure(referrals, [[Step 6 referrals]])
* group[=].stratifier[+].code = MonitoringBreakdownCS#referral-target
* insert Figure(time-to-decision, [[Cases with a first team decision; the score is the median hours from flag to decision]])
