-- patient_address: one row per Patient.address (forEach: address), with the geolocation
-- extension (schemas/views/patient_address.json).
COPY (
  SELECT id, address_index, a.use, a.type, a.text, coalesce(a.line, []) AS line, a.city, a.district,
         a.state, a.postalCode AS postal_code, a.country,
         a.period.start AS period_start, a.period."end" AS period_end,
         first_nn(flatten(list_transform(
           list_filter(a.extension, lambda e: e.url = 'http://hl7.org/fhir/StructureDefinition/geolocation'),
           lambda e: list_transform(list_filter(e.extension, lambda x: x.url = 'latitude'), lambda x: x.valueDecimal)))) AS latitude,
         first_nn(flatten(list_transform(
           list_filter(a.extension, lambda e: e.url = 'http://hl7.org/fhir/StructureDefinition/geolocation'),
           lambda e: list_transform(list_filter(e.extension, lambda x: x.url = 'longitude'), lambda x: x.valueDecimal)))) AS longitude
  FROM (
    SELECT id, generate_subscripts(address, 1) - 1 AS address_index, unnest(address) AS a
    FROM read_ndjson(__FILES__, format = 'newline_delimited', maximum_object_size = 67108864,
      columns = {id: 'VARCHAR', address: 'STRUCT(use VARCHAR, type VARCHAR, text VARCHAR, line VARCHAR[],
        city VARCHAR, district VARCHAR, state VARCHAR, postalCode VARCHAR, country VARCHAR, period period_t,
        extension STRUCT(url VARCHAR, extension STRUCT(url VARCHAR, valueDecimal VARCHAR)[])[])[]'})
  )
) TO __OUT__ (FORMAT parquet, COMPRESSION zstd);
