-- immunization: one row per Immunization (schemas/views/immunization.json).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         status,
         vaccineCode.coding[1].system AS vaccine_system,
         vaccineCode.coding[1].code AS vaccine_code,
         vaccineCode.coding[1].display AS vaccine_display,
         vaccineCode.text AS vaccine_text,
         ref_key(patient.reference, 'Patient') AS patient_id,
         ref_key(encounter.reference, 'Encounter') AS encounter_id,
         occurrenceDateTime AS occurrence_date_time,
         occurrenceString AS occurrence_string,
         primarySource AS primary_source,
         lotNumber AS lot_number,
         ref_key(location.reference, 'Location') AS location_id,
         statusReason.coding[1].code AS status_reason_code
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', status: 'VARCHAR', vaccineCode: 'cc_t',
      patient: 'ref_t', encounter: 'ref_t', occurrenceDateTime: 'VARCHAR',
      occurrenceString: 'VARCHAR', primarySource: 'BOOLEAN', lotNumber: 'VARCHAR',
      location: 'ref_t', statusReason: 'cc_t'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
