-- medication_request: one row per MedicationRequest (schemas/views/medication_request.json).
-- The medication is medication[x] as a CodeableConcept, or the code of the contained
-- Medication that medicationReference points at ('#' + id).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         status,
         intent,
         flatten(list_transform(category, lambda c: c.coding))[1].code AS category_code,
         med.coding[1].system AS medication_system,
         med.coding[1].code AS medication_code,
         med.coding[1].display AS medication_display,
         med.text AS medication_text,
         ref_key(medicationReference.reference, 'Medication') AS medication_id,
         ref_key(subject.reference, 'Patient') AS patient_id,
         ref_key(encounter.reference, 'Encounter') AS encounter_id,
         authoredOn AS authored_on,
         ref_key(requester.reference, 'Practitioner') AS requester_practitioner_id,
         reasonCode[1].coding[1].code AS reason_code,
         first_nn(list_transform(reasonReference, lambda r: ref_key(r.reference, 'Condition'))) AS reason_condition_id,
         dosageInstruction[1].text AS dosage_text
  FROM (
    SELECT *, coalesce(medicationCodeableConcept,
             list_filter(contained, lambda c: c.resourceType = 'Medication'
               AND '#' || c.id = medicationReference.reference)[1].code) AS med
    FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
      columns = {id: 'VARCHAR', meta: 'meta_t', status: 'VARCHAR', intent: 'VARCHAR',
        category: 'cc_t[]', medicationCodeableConcept: 'cc_t', medicationReference: 'ref_t',
        contained: 'STRUCT(resourceType VARCHAR, id VARCHAR, code cc_t)[]',
        subject: 'ref_t', encounter: 'ref_t', authoredOn: 'VARCHAR', requester: 'ref_t',
        reasonCode: 'cc_t[]', reasonReference: 'ref_t[]',
        dosageInstruction: 'STRUCT(text VARCHAR)[]'})
  )
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
