-- procedure: one row per Procedure (schemas/views/procedure.json).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         status,
         code.coding[1].system AS code_system,
         code.coding[1].code AS code_code,
         code.coding[1].display AS code_display,
         code.text AS code_text,
         ref_key(subject.reference, 'Patient') AS patient_id,
         ref_key(encounter.reference, 'Encounter') AS encounter_id,
         performedDateTime AS performed_date_time,
         performedPeriod.start AS performed_period_start,
         performedPeriod."end" AS performed_period_end,
         reasonCode[1].coding[1].code AS reason_code,
         first_nn(list_transform(reasonReference, lambda r: ref_key(r.reference, 'Condition'))) AS reason_condition_id,
         ref_key(location.reference, 'Location') AS location_id
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', status: 'VARCHAR', code: 'cc_t', subject: 'ref_t',
      encounter: 'ref_t', performedDateTime: 'VARCHAR', performedPeriod: 'period_t',
      reasonCode: 'cc_t[]', reasonReference: 'ref_t[]', location: 'ref_t'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
