-- allergy_intolerance: one row per AllergyIntolerance (schemas/views/allergy_intolerance.json).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         clinicalStatus.coding[1].code AS clinical_status_code,
         verificationStatus.coding[1].code AS verification_status_code,
         type,
         coalesce(category, []) AS category,
         criticality,
         code.coding[1].system AS code_system,
         code.coding[1].code AS code_code,
         code.coding[1].display AS code_display,
         code.text AS code_text,
         ref_key(patient.reference, 'Patient') AS patient_id,
         ref_key(encounter.reference, 'Encounter') AS encounter_id,
         onsetDateTime AS onset_date_time,
         recordedDate AS recorded_date,
         reaction[1].manifestation[1].coding[1].code AS reaction_manifestation_code
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', clinicalStatus: 'cc_t', verificationStatus: 'cc_t',
      type: 'VARCHAR', category: 'VARCHAR[]', criticality: 'VARCHAR', code: 'cc_t',
      patient: 'ref_t', encounter: 'ref_t', onsetDateTime: 'VARCHAR', recordedDate: 'VARCHAR',
      reaction: 'STRUCT(manifestation cc_t[])[]'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
