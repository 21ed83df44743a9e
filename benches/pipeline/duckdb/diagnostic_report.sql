-- diagnostic_report: one row per DiagnosticReport (schemas/views/diagnostic_report.json).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         status,
         flatten(list_transform(category, lambda c: c.coding))[1].system AS category_system,
         flatten(list_transform(category, lambda c: c.coding))[1].code AS category_code,
         code.coding[1].system AS code_system,
         code.coding[1].code AS code_code,
         code.coding[1].display AS code_display,
         code.text AS code_text,
         ref_key(subject.reference, 'Patient') AS patient_id,
         ref_key(encounter.reference, 'Encounter') AS encounter_id,
         effectiveDateTime AS effective_date_time,
         effectivePeriod.start AS effective_period_start,
         effectivePeriod."end" AS effective_period_end,
         instant(issued) AS issued,
         list_filter(list_transform(coalesce(result, []), lambda r: ref_key(r.reference, 'Observation')),
           lambda k: k IS NOT NULL) AS result_observation_ids,
         conclusion
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', status: 'VARCHAR', category: 'cc_t[]', code: 'cc_t',
      subject: 'ref_t', encounter: 'ref_t', effectiveDateTime: 'VARCHAR', effectivePeriod: 'period_t',
      issued: 'VARCHAR', result: 'ref_t[]', conclusion: 'VARCHAR'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
