-- condition: one row per Condition (schemas/views/condition.json).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         clinicalStatus.coding[1].code AS clinical_status_code,
         verificationStatus.coding[1].code AS verification_status_code,
         flatten(list_transform(category, lambda c: c.coding))[1].code AS category_code,
         severity.coding[1].code AS severity_code,
         code.coding[1].system AS code_system,
         code.coding[1].code AS code_code,
         code.coding[1].display AS code_display,
         code.text AS code_text,
         ref_key(subject.reference, 'Patient') AS patient_id,
         ref_key(encounter.reference, 'Encounter') AS encounter_id,
         onsetDateTime AS onset_date_time,
         onsetPeriod.start AS onset_period_start,
         onsetString AS onset_string,
         abatementDateTime AS abatement_date_time,
         abatementPeriod."end" AS abatement_period_end,
         recordedDate AS recorded_date
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', clinicalStatus: 'cc_t', verificationStatus: 'cc_t',
      category: 'cc_t[]', severity: 'cc_t', code: 'cc_t', subject: 'ref_t', encounter: 'ref_t',
      onsetDateTime: 'VARCHAR', onsetPeriod: 'period_t', onsetString: 'VARCHAR',
      abatementDateTime: 'VARCHAR', abatementPeriod: 'period_t', recordedDate: 'VARCHAR'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
