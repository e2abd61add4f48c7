// Kindreflex CodeSystems. One CodeSystem per concept; displays in Dutch (nl-BE),
// designations in French (fr-BE) and English (en). The protocol's enums in
// service/protocol.py carry exactly these codes (a test checks both directions).

RuleSet: KRCodeSystem(id, title)
* ^url = "https://kindreflex-ed.be/fhir/CodeSystem/{id}"
* ^status = #draft
* ^experimental = false
* ^caseSensitive = true
* ^content = #complete
* ^language = #nl-BE
* insert Published
* ^title = "{title}"

// Designations in French and English for one code
RuleSet: Tr(code, fr, en)
* #{code} ^designation[+].language = #fr-BE
* #{code} ^designation[=].value = "{fr}"
* #{code} ^designation[+].language = #en
* #{code} ^designation[=].value = "{en}"

CodeSystem: KindreflexStepCS
Id: kindreflex-step
Title: "Kindreflex steps"
Description: "The six steps of the Flemish Kindreflex (kindreflex.be/stappenplan). Used as Observation.code of a step finding and to tell the last step of an open concern."
* insert KRCodeSystem(kindreflex-step, Kindreflex steps)
* #step-1 "Stap 1: voer een positief gesprek over de kinderen en het ouderschap" "Say that the topic is standard; ask whether the patient cares (fully, partly or occasionally) for children or expects a child; record each child's name, date of birth and whether the child lives with the patient."
* insert Tr(step-1, Étape 1 : avoir une conversation positive sur les enfants et la parentalité, Step 1: talk about the children and parenthood)
* #step-2 "Stap 2: peil naar de veiligheid thuis en het welzijn van de kinderen" "Gauge safety at home and the children's well-being; a niet-pluis feeling is recorded with its reasons."
* insert Tr(step-2, Étape 2 : évaluer la sécurité à la maison et le bien-être des enfants, Step 2: gauge safety at home and the children's well-being)
* #step-3 "Stap 3: ondersteun de cliënt in zijn rol als ouder" "Support the patient as a parent and record how."
* insert Tr(step-3, Étape 3 : soutenir le patient dans son rôle de parent, Step 3: support the patient as a parent)
* #step-4 "Stap 4: ga na of er sprake is van verontrusting en bereidheid" "Weigh risk and protective factors and decide as a team whether the situation is concerning and whether the patient is willing to change it."
* insert Tr(step-4, Étape 4 : vérifier s'il y a une situation préoccupante et une disposition à coopérer, Step 4: check for concern and willingness)
* #step-5 "Stap 5: herstel de veiligheid" "Restore safety with the family and record progress."
* insert Tr(step-5, Étape 5 : rétablir la sécurité, Step 5: restore safety)
* #step-6 "Stap 6: betrek een gemandateerde voorziening" "Involve a mandated facility (VK or OCJ) or, with acute danger, the public prosecutor and/or police; inform the patient; record the follow-up actions."
* insert Tr(step-6, Étape 6 : impliquer un service mandaté, Step 6: involve a mandated facility)

CodeSystem: SafetyAssessmentCS
Id: safety-assessment
Title: "Step 2 safety assessment"
Description: "Outcome of step 2 (gauging safety at home). no-concern leads to step 3; niet-pluis and unclear lead to step 4."
* insert KRCodeSystem(safety-assessment, Step 2 safety assessment)
* #no-concern "Geen twijfels over de thuissituatie" "No doubts about the home situation: go to step 3."
* insert Tr(no-concern, Aucun doute sur la situation à la maison, No concern about the home situation)
* #niet-pluis "Niet-pluisgevoel" "A gut feeling that something is wrong at home; the reasons must be recorded. Go to step 4."
* insert Tr(niet-pluis, Sentiment que quelque chose ne va pas, Gut feeling that something is wrong)
* #unclear "Onduidelijk" "Much is still unclear about the home situation: go to step 4."
* insert Tr(unclear, Situation peu claire, Unclear)

CodeSystem: TeamDecisionCS
Id: team-decision
Title: "Step 4 team decision"
Description: "The team's decision at step 4 on concern and willingness. safe leads to step 3, concerning-willing to step 5, concerning-unwilling and acute-danger to step 6."
* insert KRCodeSystem(team-decision, Step 4 team decision)
* #safe "De thuissituatie is veilig" "The home situation is safe: go to step 3."
* insert Tr(safe, La situation à la maison est sûre, The home situation is safe)
* #concerning-willing "Verontrustend, maar de cliënt is bereid mee te werken" "Concerning, and the patient is willing to change the situation: go to step 5."
* insert Tr(concerning-willing, Préoccupante mais le patient est disposé à coopérer, Concerning but the patient is willing)
* #concerning-unwilling "Verontrustend, met onvermogen of weerstand bij de cliënt" "Concerning, and the patient is unable or resists changing the situation: go to step 6 (VK or OCJ)."
* insert Tr(concerning-unwilling, Préoccupante avec incapacité ou résistance du patient, Concerning with inability or resistance)
* #acute-danger "Acuut gevaar" "A child is in acute danger: go to step 6 (public prosecutor and/or police)."
* insert Tr(acute-danger, Danger aigu, Acute danger)

CodeSystem: SafetyProgressCS
Id: safety-progress
Title: "Step 5 progress"
Description: "Progress recorded at step 5. improving leads to step 3, not-restored to step 6."
* insert KRCodeSystem(safety-progress, Step 5 progress)
* #improving "De situatie verbetert" "The situation is improving: go back to step 3."
* insert Tr(improving, La situation s'améliore, The situation is improving)
* #not-restored "De veiligheid is niet hersteld" "Safety has not been restored: go to step 6."
* insert Tr(not-restored, La sécurité n'est pas rétablie, Safety not restored)

CodeSystem: LivesWithCS
Id: lives-with
Title: "Lives with the patient"
Description: "Whether a child lives with the patient."
* insert KRCodeSystem(lives-with, Lives with the patient)
* #permanently "Woont permanent bij de cliënt" "The child lives permanently with the patient."
* insert Tr(permanently, Vit en permanence chez le patient, Lives permanently with the patient)
* #part-time "Woont deeltijds bij de cliënt" "The child lives part of the time with the patient (for example co-parenting)."
* insert Tr(part-time, Vit à temps partiel chez le patient, Lives part-time with the patient)
* #not "Woont niet bij de cliënt" "The child does not live with the patient."
* insert Tr(not, Ne vit pas chez le patient, Does not live with the patient)

CodeSystem: SupportActionCS
Id: support-action
Title: "Step 3 support actions"
Description: "How the patient was supported as a parent (step 3)."
* insert KRCodeSystem(support-action, Step 3 support actions)
* #ask-regularly "Regelmatig vragen naar de kinderen en het ouderschap" "Ask regularly about the children and parenthood."
* insert Tr(ask-regularly, Demander régulièrement des nouvelles des enfants et de la parentalité, Ask regularly about the children and parenthood)
* #discuss-impact "De impact van de situatie op de kinderen bespreken" "Discuss the impact of the situation on the children."
* insert Tr(discuss-impact, Discuter de l'impact de la situation sur les enfants, Discuss the impact of the situation on the children)
* #strengthen-resilience "Helpen de veerkracht van de kinderen te vergroten" "Help the patient strengthen the children's resilience."
* insert Tr(strengthen-resilience, Aider à renforcer la résilience des enfants, Help strengthen the children's resilience)
* #involve-children "De kinderen betrekken en ondersteunen waar nodig" "Involve the children and support them where needed."
* insert Tr(involve-children, Impliquer les enfants et les soutenir si nécessaire, Involve the children and support them where needed)
* #involve-network "Het netwerk betrekken (partner, grootouders, buur, vriend)" "Involve relevant people around the patient (partner, grandparents, neighbour, friend)."
* insert Tr(involve-network, Impliquer le réseau (partenaire\, grands-parents\, voisin\, ami\), Involve the network (partner\, grandparents\, neighbour\, friend\))
* #involve-service "Een andere voorziening betrekken voor ondersteuning" "Involve another service to support the patient."
* insert Tr(involve-service, Impliquer un autre service de soutien, Involve another service for support)
* #kind-en-gezin-start "Doorverwijzen naar Kind en Gezin voor een startgesprek" "Refer to Kind en Gezin for a start conversation (children from -9 months to 3 years)."
* insert Tr(kind-en-gezin-start, Orienter vers Kind en Gezin pour un entretien de départ, Refer to Kind en Gezin for a start conversation)

CodeSystem: SafetyActionCS
Id: safety-action
Title: "Step 5 safety actions"
Description: "Actions taken to restore safety (step 5)."
* insert KRCodeSystem(safety-action, Step 5 safety actions)
* #create-safe-situation "Een veilige situatie creëren voor de kinderen" "Create a safe situation for the children, yourself or with a suitable service."
* insert Tr(create-safe-situation, Créer une situation sûre pour les enfants, Create a safe situation for the children)
* #work-with-family "Met de context aan de slag gaan en het hele gezin betrekken" "Work with the patient's context and involve the whole family."
* insert Tr(work-with-family, Travailler avec le contexte et impliquer toute la famille, Work with the whole family)
* #help-for-children "Hulp installeren voor de kinderen" "Install help for the children."
* insert Tr(help-for-children, Mettre en place une aide pour les enfants, Install help for the children)
* #anonymous-consultation "Telefonisch (anoniem) overleg met VK en/of OCJ" "Consult the VK and/or OCJ by phone (anonymously)."
* insert Tr(anonymous-consultation, Consultation téléphonique (anonyme\) du VK et/ou de l'OCJ, Anonymous phone consultation with the VK and/or OCJ)
* #revisit-parenthood "Het ouderschap regelmatig opnieuw bespreken en alert blijven" "Discuss parenthood again regularly and stay alert for worrying signals."
* insert Tr(revisit-parenthood, Rediscuter régulièrement la parentalité et rester attentif, Revisit parenthood regularly and stay alert)
* #involve-service "Een gepaste hulpvoorziening betrekken" "Involve a suitable support service."
* insert Tr(involve-service, Impliquer un service d'aide adapté, Involve a suitable service)

CodeSystem: HagueTriggerCS
Id: hague-trigger
Title: "Hague Protocol trigger groups"
Description: "The three presentations of an adult at the emergency department that the Hague Protocol uses as triggers for checking the children. Each group has a ValueSet of clinical codes (SNOMED CT, ICD-10-CM) that a hospital extends."
* insert KRCodeSystem(hague-trigger, Hague Protocol trigger groups)
* #domestic-violence "Partnergeweld of huiselijk geweld" "Intimate-partner or domestic violence."
* insert Tr(domestic-violence, Violence entre partenaires ou violence domestique, Intimate-partner or domestic violence)
* #substance-abuse "Middelenmisbruik of intoxicatie" "Substance abuse or intoxication (alcohol or drugs)."
* insert Tr(substance-abuse, Abus de substances ou intoxication, Substance abuse or intoxication)
* #self-harm-psychiatric "Suïcidepoging, zelfbeschadiging of ernstige psychiatrische problemen" "Suicide attempt, self-harm or serious psychiatric problems."
* insert Tr(self-harm-psychiatric, Tentative de suicide\, automutilation ou troubles psychiatriques graves, Suicide attempt\, self-harm or serious psychiatric problems)

CodeSystem: ConsultationTypeCS
Id: consultation-type
Title: "Consultations"
Description: "With whom the professional discussed the situation (steps 2, 4 and 5)."
* insert KRCodeSystem(consultation-type, Consultations)
* #colleague "Overleg met een collega" "Discussed with a colleague."
* insert Tr(colleague, Concertation avec un collègue, Discussed with a colleague)
* #expert "Overleg met een expert" "Discussed with an expert."
* insert Tr(expert, Concertation avec un expert, Discussed with an expert)
* #vk-anonymous "Anoniem overleg met het Vertrouwenscentrum Kindermishandeling" "Anonymous consultation of the VK."
* insert Tr(vk-anonymous, Consultation anonyme du centre de confiance pour enfants maltraités (VK\), Anonymous consultation of the VK)
* #ocj-anonymous "Anoniem overleg met het Ondersteuningscentrum Jeugdhulp" "Anonymous consultation of the OCJ."
* insert Tr(ocj-anonymous, Consultation anonyme du centre de soutien à l'aide à la jeunesse (OCJ\), Anonymous consultation of the OCJ)
* #clb "Overleg met het CLB" "Consultation of the school's pupil guidance centre (CLB), for school-age children."
* insert Tr(clb, Concertation avec le CLB, Consultation of the CLB)

CodeSystem: PartnerTypeCS
Id: partner-type
Title: "Partner types and referral targets"
Description: "Kinds of partner organisations in a region's Kindreflex directory, and the targets of a referral. The directory itself (names, phone numbers) is configuration, not terminology."
* insert KRCodeSystem(partner-type, Partner types and referral targets)
* #vk "Vertrouwenscentrum Kindermishandeling (VK)" "Flemish confidential centre for child abuse (mandated facility)."
* insert Tr(vk, Centre de confiance pour enfants maltraités (VK\), Confidential Centre for Child Abuse (VK\))
* #ocj "Ondersteuningscentrum Jeugdhulp (OCJ)" "Support centre for youth care (mandated facility)."
* insert Tr(ocj, Centre de soutien à l'aide à la jeunesse (OCJ\), Youth Care Support Centre (OCJ\))
* #parket "Parket (procureur des Konings)" "The public prosecutor's office."
* insert Tr(parket, Parquet (procureur du Roi\), Public prosecutor)
* #police "Politie" "The police."
* insert Tr(police, Police, Police)
* #kind-en-gezin "Kind en Gezin" "Kind en Gezin (Flemish agency for young children and families)."
* insert Tr(kind-en-gezin, Kind en Gezin, Kind en Gezin)
* #clb "Centrum voor Leerlingenbegeleiding (CLB)" "Pupil guidance centre."
* insert Tr(clb, Centre d'encadrement des élèves (CLB\), Pupil guidance centre (CLB\))
* #caw "Centrum Algemeen Welzijnswerk (CAW)" "Centre for general welfare work."
* insert Tr(caw, Centre d'aide sociale générale (CAW\), Centre for general welfare work (CAW\))
* #cgg "Centrum voor Geestelijke Gezondheidszorg (CGG)" "Mental health centre (psychotherapy)."
* insert Tr(cgg, Centre de santé mentale (CGG\), Mental health centre (CGG\))
* #ckg "Centrum voor Kinderzorg en Gezinsondersteuning (CKG)" "Centre for childcare and family support (parenting support)."
* insert Tr(ckg, Centre de soins aux enfants et de soutien aux familles (CKG\), Centre for childcare and family support (CKG\))
* #ocmw "OCMW" "Public centre for social welfare."
* insert Tr(ocmw, CPAS, Public social welfare centre)
* #huis-van-het-kind "Huis van het Kind" "Local family support network."
* insert Tr(huis-van-het-kind, Maison de l'enfant (Huis van het Kind\), Huis van het Kind (family centre\))
* #opvoedingslijn "Opvoedingslijn" "Parenting helpline."
* insert Tr(opvoedingslijn, Ligne d'aide à l'éducation (Opvoedingslijn\), Parenting helpline)
* #rtj "Regionaal team jeugdhulp (1 Gezin 1 Plan)" "Regional youth care team (1 Gezin 1 Plan)."
* insert Tr(rtj, Équipe régionale d'aide à la jeunesse (1 Gezin 1 Plan\), Regional youth care team (1 Gezin 1 Plan\))
* #fara "Fara" "Listening and guidance for pregnancy choices."
* insert Tr(fara, Fara (accompagnement des choix de grossesse\), Fara (pregnancy choices\))
* #echo "Echo" "Peer support for survivors of child abuse."
* insert Tr(echo, Echo (groupe de pairs\), Echo (peer support\))
* #car "Centrum voor Ambulante Revalidatie (CAR)" "Assessment and therapy for children with suspected developmental problems."
* insert Tr(car, Centre de revalidation ambulatoire (CAR\), Ambulatory rehabilitation centre (CAR\))
* #fiola "Fiola" "Support with suspected developmental problems or an intellectual or motor disability."
* insert Tr(fiola, Fiola, Fiola)
* #gp "Huisarts" "General practitioner."
* insert Tr(gp, Médecin généraliste, General practitioner)
* #mutuality "Ziekenfonds (mutualiteit)" "Health insurance fund."
* insert Tr(mutuality, Mutualité, Health insurance fund)

CodeSystem: PregnancyOfCS
Id: pregnancy-of
Title: "Pregnancy of"
Description: "Who is pregnant when the patient expects a child."
* insert KRCodeSystem(pregnancy-of, Pregnancy of)
* #patient "De cliënt is zwanger" "The patient is pregnant."
* insert Tr(patient, La patiente est enceinte, The patient is pregnant)
* #partner "De partner van de cliënt is zwanger" "The patient's partner is pregnant."
* insert Tr(partner, La partenaire du patient est enceinte, The patient's partner is pregnant)

CodeSystem: FactorCS
Id: factor
Title: "Risk and protective factors"
Description: "A starting catalogue of risk and protective factors for weighing concern at step 4, drawn from the Kindreflex leaflet and workshop (seeds 000 and 001) and the pocket card. The property 'kind' tells risk from protective. A hospital extends the ValueSet with its own codes or an assessment instrument's codes."
* insert KRCodeSystem(factor, Risk and protective factors)
* ^property[0].code = #kind
* ^property[0].uri = "https://kindreflex-ed.be/fhir/CodeSystem/factor-kind"
* ^property[0].description = "risk or protective: a Coding of CodeSystem factor-kind (an external code system to this one, hence type Coding, not code)"
* ^property[0].type = #Coding
* #parental-mental-illness "Psychische problemen bij de ouder" "Mental health problems of the parent."
* #parental-mental-illness ^property[0].code = #kind
* #parental-mental-illness ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(parental-mental-illness, Problèmes psychiques du parent, Parental mental illness)
* #addiction "Verslaving" "Addiction (alcohol, drugs, medication, gambling)."
* #addiction ^property[0].code = #kind
* #addiction ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(addiction, Dépendance, Addiction)
* #adverse-childhood-experiences "Eigen negatieve jeugdervaringen" "The parent's own adverse childhood experiences."
* #adverse-childhood-experiences ^property[0].code = #kind
* #adverse-childhood-experiences ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(adverse-childhood-experiences, Expériences négatives dans l'enfance du parent, Own adverse childhood experiences)
* #high-stress "Hoge mate van stress" "A high level of stress; the parent cannot organise the day."
* #high-stress ^property[0].code = #kind
* #high-stress ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(high-stress, Niveau de stress élevé, High stress)
* #domestic-violence "Huiselijk geweld" "Domestic or intimate-partner violence."
* #domestic-violence ^property[0].code = #kind
* #domestic-violence ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(domestic-violence, Violence domestique, Domestic violence)
* #isolation "Sociaal isolement" "Social isolation; no one to help on a bad day."
* #isolation ^property[0].code = #kind
* #isolation ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(isolation, Isolement social, Social isolation)
* #financial-problems "Financiële problemen" "Financial problems."
* #financial-problems ^property[0].code = #kind
* #financial-problems ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(financial-problems, Problèmes financiers, Financial problems)
* #partner-hostile-to-children "Partner ergert zich aan de kinderen" "A (new) partner is hostile to or irritated by the children."
* #partner-hostile-to-children ^property[0].code = #kind
* #partner-hostile-to-children ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(partner-hostile-to-children, Le partenaire est hostile aux enfants, Partner hostile to the children)
* #children-left-alone "Kinderen blijven vaak alleen thuis" "The children are often left alone at home."
* #children-left-alone ^property[0].code = #kind
* #children-left-alone ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(children-left-alone, Les enfants restent souvent seuls à la maison, Children often left alone)
* #school-absence "Kinderen vaak afwezig op school" "The children are often absent from school."
* #school-absence ^property[0].code = #kind
* #school-absence ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(school-absence, Les enfants sont souvent absents à l'école, Children often absent from school)
* #basic-needs-unmet "Basisbehoeften niet vervuld" "Basic needs not met (for example no lunch taken to school)."
* #basic-needs-unmet ^property[0].code = #kind
* #basic-needs-unmet ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(basic-needs-unmet, Besoins de base non satisfaits, Basic needs not met)
* #child-development-concerns "Ontwikkelings- of schoolproblemen bij het kind" "Developmental or school problems of a child."
* #child-development-concerns ^property[0].code = #kind
* #child-development-concerns ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(child-development-concerns, Problèmes de développement ou scolaires de l'enfant, Developmental or school problems of the child)
* #injuries "Letsels (zoals blauwe plekken)" "Injuries such as bruises on the parent or a child."
* #injuries ^property[0].code = #kind
* #injuries ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(injuries, Lésions (comme des ecchymoses\), Injuries (such as bruises\))
* #school-concern "Blijvende ongerustheid van school of CLB" "Persistent concern voiced by the school or the CLB."
* #school-concern ^property[0].code = #kind
* #school-concern ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(school-concern, Inquiétude persistante de l'école ou du CLB, Persistent concern from school or CLB)
* #help-refused "Cliënt weigert hulp of zet begeleiding stop" "The patient refuses help or stops care."
* #help-refused ^property[0].code = #kind
* #help-refused ^property[0].valueCoding = FactorKindCS#risk
* insert Tr(help-refused, Le patient refuse l'aide ou arrête l'accompagnement, Patient refuses help or stops care)
* #supportive-network "Steunend netwerk" "A supportive network (partner, grandparents, neighbour, friend)."
* #supportive-network ^property[0].code = #kind
* #supportive-network ^property[0].valueCoding = FactorKindCS#protective
* insert Tr(supportive-network, Réseau de soutien, Supportive network)
* #asks-for-help "Ouder vraagt hulp" "The parent asks for help."
* #asks-for-help ^property[0].code = #kind
* #asks-for-help ^property[0].valueCoding = FactorKindCS#protective
* insert Tr(asks-for-help, Le parent demande de l'aide, Parent asks for help)
* #insight "Inzicht in de problemen" "The parent has insight into the problems and their impact on the children."
* #insight ^property[0].code = #kind
* #insight ^property[0].valueCoding = FactorKindCS#protective
* insert Tr(insight, Conscience des problèmes, Insight into the problems)
* #cooperates-with-care "Werkt mee met de hulpverlening" "The parent cooperates with care providers."
* #cooperates-with-care ^property[0].code = #kind
* #cooperates-with-care ^property[0].valueCoding = FactorKindCS#protective
* insert Tr(cooperates-with-care, Coopère avec les intervenants, Cooperates with care)
* #positive-parent-child-bond "Positieve band tussen ouder en kind" "A warm, positive relationship between parent and child."
* #positive-parent-child-bond ^property[0].code = #kind
* #positive-parent-child-bond ^property[0].valueCoding = FactorKindCS#protective
* insert Tr(positive-parent-child-bond, Lien positif entre parent et enfant, Positive parent-child bond)
* #child-resilience "Veerkracht van het kind" "The child is resilient and has a trusted adult."
* #child-resilience ^property[0].code = #kind
* #child-resilience ^property[0].valueCoding = FactorKindCS#protective
* insert Tr(child-resilience, Résilience de l'enfant, Child's resilience)
* #professional-involvement "Betrokken hulpverlening of school" "Care providers, the school or the CLB are involved and follow up."
* #professional-involvement ^property[0].code = #kind
* #professional-involvement ^property[0].valueCoding = FactorKindCS#protective
* insert Tr(professional-involvement, Intervenants ou école impliqués, Professionals or school involved)

CodeSystem: RecordTypeCS
Id: record-type
Title: "Kindreflex record types"
Description: "Codes for the resources Kindreflex writes that are not a step finding: the expecting-a-child observation, the referral and the open concern."
* insert KRCodeSystem(record-type, Kindreflex record types)
* #expecting-child "Verwacht een kind" "The patient or the patient's partner is expecting a child."
* insert Tr(expecting-child, Attend un enfant, Expecting a child)
* #referral "Melding of doorverwijzing in het kader van de Kindreflex" "Referral to or report to a mandated facility or another partner at step 6."
* insert Tr(referral, Signalement ou orientation dans le cadre du Kindreflex, Kindreflex referral)
* #open-concern "Openstaande Kindreflex-zorg" "An open Kindreflex concern about the children of this patient: the next presentation is flagged and the social service follows it up."
* insert Tr(open-concern, Préoccupation Kindreflex ouverte, Open Kindreflex concern)

CodeSystem: FindingComponentCS
Id: finding-component
Title: "Step finding components"
Description: "Codes of the components of Kindreflex step findings (Observation.component.code)."
* insert KRCodeSystem(finding-component, Step finding components)
* #reason "Reden" "A reason for the assessment (for example for a niet-pluis feeling), as text or as a factor code."
* insert Tr(reason, Raison, Reason)
* #factor "Risico- of beschermende factor" "A risk or protective factor weighed at step 4."
* insert Tr(factor, Facteur de risque ou de protection, Risk or protective factor)
* #who-helps "Wie helpt op een mindere dag" "Who or what helps the family on a bad day (text, step 2)."
* insert Tr(who-helps, Qui aide lors d'un mauvais jour, Who helps on a bad day)
* #urgency "Acuut gevaar" "Whether the situation at home is acutely unsafe for a child (true/false)."
* insert Tr(urgency, Danger aigu, Acute danger)
* #trigger "Aanleiding (Haags protocol)" "The Hague Protocol presentation that prompted the check."
* insert Tr(trigger, Déclencheur (protocole de La Haye\), Trigger (Hague Protocol\))
* #service "Betrokken dienst" "A supporting service involved (steps 3 and 5; not the VK, OCJ, parket or police)."
* insert Tr(service, Service impliqué, Service involved)
* #discussed-with-patient "Zorgen besproken met de cliënt" "The worries were named concretely to the patient (true/false)."
* insert Tr(discussed-with-patient, Inquiétudes discutées avec le patient, Worries discussed with the patient)
* #with-cooperation "Met medewerking van de cliënt" "The referral is made with the patient's cooperation (true/false)."
* insert Tr(with-cooperation, Avec la coopération du patient, With the patient's cooperation)
* #not-informed-reason "Reden waarom de cliënt niet vooraf is ingelicht" "Why the patient could not be informed before the referral (only with acute danger)."
* insert Tr(not-informed-reason, Raison pour laquelle le patient n'a pas été informé au préalable, Why the patient was not informed first)
* #consultation "Overleg" "With whom the situation was discussed."
* insert Tr(consultation, Concertation, Consultation)
* #child-consent "Toestemming van het kind" "A child listened to as a key person consented (true) or not (false); the child is named in an extension. Children from 12 decide much themselves."
* insert Tr(child-consent, Consentement de l'enfant, Child's consent)
* #support-action "Ondersteuning" "A way the patient was supported as a parent (step 3)."
* insert Tr(support-action, Soutien, Support action)
* #safety-action "Actie voor veiligheid" "An action taken to restore safety (step 5)."
* insert Tr(safety-action, Action de sécurité, Safety action)
* #plan-version "Versie van het stappenplan" "The version of the facility's wording of the Kindreflex plan shown to the user."
* insert Tr(plan-version, Version du plan, Plan version)
* #patient-informed "Cliënt op de hoogte gebracht" "Whether the patient was informed and prepared (true/false)."
* insert Tr(patient-informed, Patient informé, Patient informed)
* #follow-up "Vervolgactie" "A follow-up action agreed with the mandated facility (text)."
* insert Tr(follow-up, Action de suivi, Follow-up action)
* #expected-delivery-date "Verwachte bevallingsdatum" "The expected date of delivery."
* insert Tr(expected-delivery-date, Date prévue de l'accouchement, Expected delivery date)
* #child-say "Inbreng van het kind" "What a child heard at step 4 said or wants (text); the child is named in an extension. From 12 a child decides much itself."
* insert Tr(child-say, Avis de l'enfant, The child's own say)
* #key-person "Gehoorde sleutelfiguur" "An adult key person heard at step 4 (partner, grandparent, other; text: who)."
* insert Tr(key-person, Personne clé entendue, Key person heard)
* #patient-explanation "Uitleg van de cliënt" "The patient's explanation of the worries named to them (text, step 4)."
* insert Tr(patient-explanation, Explication du patient, Patient's explanation)
* #team-member "Deelnemer aan het teamoverleg" "Who took part in the team decision (name or role, text, step 4)."
* insert Tr(team-member, Participant à la décision d'équipe, Team decision participant)
* #agreed-action "Afgesproken actie" "An action agreed with the patient, the family or a service (text, step 5), with its follow-up date in an extension."
* insert Tr(agreed-action, Action convenue, Agreed action)
* #next-follow-up "Volgende opvolging" "The date of the next follow-up of restoring safety (step 5)."
* insert Tr(next-follow-up, Prochain suivi, Next follow-up)
* #contact-date "Datum van het contact" "When the hospital contacted the mandated facility (step 6)."
* insert Tr(contact-date, Date du contact, Contact date)
* #contact-person "Contactpersoon" "The person at the mandated facility the hospital spoke or wrote to (step 6)."
* insert Tr(contact-person, Personne de contact, Contact person)
* #contact-channel "Manier van contact" "How the mandated facility was contacted: phone, letter, email, other (step 6)."
* insert Tr(contact-channel, Moyen de contact, Contact channel)

CodeSystem: FactorKindCS
Id: factor-kind
Title: "Kind of factor"
Description: "Whether a step 4 factor is a risk factor or a protective factor."
* insert KRCodeSystem(factor-kind, Kind of factor)
* #risk "Risicofactor" "A factor that raises the risk for the children."
* insert Tr(risk, Facteur de risque, Risk factor)
* #protective "Beschermende factor" "A factor that protects the children."
* insert Tr(protective, Facteur de protection, Protective factor)

CodeSystem: KeyPersonRoleCS
Id: key-person-role
Title: "Step 4 key person"
Description: "The adult key persons heard at step 4 (children heard are recorded with their consent)."
* insert KRCodeSystem(key-person-role, Step 4 key person)
* #partner "Partner" "The patient's partner."
* insert Tr(partner, Partenaire, Partner)
* #grandparent "Grootouder" "A grandparent of the children."
* insert Tr(grandparent, Grand-parent, Grandparent)
* #other "Andere sleutelfiguur" "Another adult close to the family (the text says who)."
* insert Tr(other, Autre personne clé, Other key person)

CodeSystem: ContactChannelCS
Id: contact-channel
Title: "Contact channel"
Description: "How the hospital contacted the mandated facility at step 6."
* insert KRCodeSystem(contact-channel, Contact channel)
* #phone "Telefonisch" "By phone."
* insert Tr(phone, Par téléphone, By phone)
* #letter "Per brief" "By letter."
* insert Tr(letter, Par lettre, By letter)
* #email "Per e-mail" "By email."
* insert Tr(email, Par e-mail, By email)
* #other "Andere manier" "Another way (e.g. in person)."
* insert Tr(other, Autre moyen, Other)

CodeSystem: CaseCloseReasonCS
Id: case-close-reason
Title: "Reason a Kindreflex case was closed"
Description: "Why the social service closed a Kindreflex case (the concern Flag became inactive). other: the text says why."
* insert KRCodeSystem(case-close-reason, Reason a Kindreflex case was closed)
* #safety-restored "Veiligheid hersteld" "The team found the home safe, or safety was restored."
* insert Tr(safety-restored, Sécurité rétablie, Safety restored)
* #referred "Doorverwezen naar een gemandateerde voorziening" "A mandated facility took over the follow-up (step 6)."
* insert Tr(referred, Orienté vers un service mandaté, Referred to a mandated facility)
* #patient-left-care "Cliënt niet meer in zorg" "The patient is no longer in the hospital's care."
* insert Tr(patient-left-care, Patient plus suivi par l'hôpital, Patient left the hospital's care)
* #other "Andere reden" "Another reason (the text says which)."
* insert Tr(other, Autre raison, Other reason)

CodeSystem: CdsOverrideReasonCS
Id: cds-override-reason
Title: "Reasons to override the Kindreflex card"
Description: "Redenen om de Kindreflex-kaart te negeren: the overrideReasons of the CDS Hooks card (the EHR sends the chosen one back in its feedback)."
* insert KRCodeSystem(cds-override-reason, Reasons to override the Kindreflex card)
* #patient-not-responsive "Patiënt niet aanspreekbaar" "The patient cannot be talked to now (unconscious, confused, intoxicated)."
* insert Tr(patient-not-responsive, Patient pas en état de répondre, Patient not responsive)
* #already-done "Kindreflex al gedaan" "The Kindreflex was already done for this presentation."
* insert Tr(already-done, Kindreflex déjà fait, Kindreflex already done)
* #no-children "Zorgt niet voor kinderen en verwacht er geen" "The patient has no children, cares for none and expects none: neither the patient nor the partner is pregnant (the Kindreflex asks from pregnancy on, seeds 001-003 step 1)."
* insert Tr(no-children, Pas d'enfants à charge ni d'enfant attendu, Cares for no children and expects none)
* #not-now "Nu niet mogelijk; later in de zorg" "Not possible now; later during the care."
* insert Tr(not-now, Pas possible maintenant ; plus tard dans les soins, Not now; later in the care)
