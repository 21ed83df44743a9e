-- encounter: one row per Encounter (schemas/views/encounter.json).
COPY (
  SELECT id,
         instant(meta.lastUpdated) AS last_updated,
         status,
         class.system AS class_system,
         class.code AS class_code,
         type[1].coding[1].system AS type_system,
         type[1].coding[1].code AS type_code,
         type[1].coding[1].display AS type_display,
         type[1].text AS type_text,
         serviceType.coding[1].code AS service_type_code,
         ref_key(subject.reference, 'Patient') AS patient_id,
         period.start AS period_start,
         period."end" AS period_end,
         first_nn(list_transform(participant, lambda p: ref_key(p.individual.reference, 'Practitioner'))) AS practitioner_id,
         ref_key(serviceProvider.reference, 'Organization') AS service_provider_id,
         first_nn(list_transform(location, lambda l: ref_key(l.location.reference, 'Location'))) AS location_id,
         reasonCode[1].coding[1].code AS reason_code,
         reasonCode[1].coding[1].display AS reason_display,
         hospitalization.dischargeDisposition.coding[1].code AS discharge_disposition_code
  FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
    columns = {id: 'VARCHAR', meta: 'meta_t', status: 'VARCHAR', class: 'coding_t', type: 'cc_t[]',
      serviceType: 'cc_t', subject: 'ref_t', period: 'period_t',
      participant: 'STRUCT(individual ref_t)[]', serviceProvider: 'ref_t',
      location: 'STRUCT(location ref_t)[]', reasonCode: 'cc_t[]',
      hospitalization: 'STRUCT(dischargeDisposition cc_t)'})
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
