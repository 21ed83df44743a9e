-- patient_telecom: one row per Patient.telecom (schemas/views/patient_telecom.json).
COPY (
  SELECT id, telecom_index, t.system, t.value, t.use, t.rank
  FROM (
    SELECT id, generate_subscripts(telecom, 1) - 1 AS telecom_index, unnest(telecom) AS t
    FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864, columns = {id: 'VARCHAR', telecom: 'contact_t[]'})
  )
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
