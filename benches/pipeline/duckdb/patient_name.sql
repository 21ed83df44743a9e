-- patient_name: one row per Patient.name (schemas/views/patient_name.json).
COPY (
  SELECT id, name_index, n.use, n.text, n.family,
         coalesce(n.given, []) AS given, coalesce(n.prefix, []) AS prefix, coalesce(n.suffix, []) AS suffix,
         n.period.start AS period_start, n.period."end" AS period_end
  FROM (
    SELECT id, generate_subscripts(name, 1) - 1 AS name_index, unnest(name) AS n
    FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864, columns = {id: 'VARCHAR', name: 'humanname_t[]'})
  )
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
