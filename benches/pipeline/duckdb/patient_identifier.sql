-- patient_identifier: one row per Patient.identifier (schemas/views/patient_identifier.json).
COPY (
  SELECT id, identifier_index, i.use,
         i.type.coding[1].system AS type_system, i.type.coding[1].code AS type_code,
         i.type.text AS type_text, i.system, i.value,
         i.period.start AS period_start, i.period."end" AS period_end
  FROM (
    SELECT id, generate_subscripts(identifier, 1) - 1 AS identifier_index, unnest(identifier) AS i
    FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864, columns = {id: 'VARCHAR', identifier: 'identifier_t[]'})
  )
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
